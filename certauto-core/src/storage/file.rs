//! A [`Storage`] backend on the local file system.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, oneshot};

use super::{KeyInfo, LockGuard, LockLoss, Storage, StorageError, validate_key};

const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The smallest interval accepted for polling and keepalive, so that a zero
/// does not turn into a busy loop.
const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The folder (relative to the root) holding lock files.
const LOCKS_DIR: &str = "locks";
/// Lock names longer than this are shortened with a hash.
const MAX_LOCK_NAME: usize = 200;
/// The most of a lock file read (they hold a short JSON object).
const MAX_LOCK_FILE: u64 = 4096;

/// Lock timings of a [`FileStorage`].
#[derive(Debug, Clone, Copy)]
struct LockConfig {
    stale_after: Duration,
    keepalive: Duration,
    poll_interval: Duration,
    wait_timeout: Option<Duration>,
}

impl Default for LockConfig {
    fn default() -> Self {
        Self {
            stale_after: DEFAULT_STALE_AFTER,
            keepalive: DEFAULT_KEEPALIVE,
            poll_interval: DEFAULT_POLL_INTERVAL,
            wait_timeout: Some(DEFAULT_WAIT_TIMEOUT),
        }
    }
}

/// Builds a [`FileStorage`] with non-default lock timings.
///
/// ```
/// use std::time::Duration;
/// use certauto_core::FileStorage;
///
/// let storage = FileStorage::builder("/var/lib/certauto")
///     .lock_stale_after(Duration::from_secs(30))
///     .lock_keepalive(Duration::from_secs(10))
///     .lock_wait_timeout(None)
///     .build();
/// assert_eq!(storage.root(), std::path::Path::new("/var/lib/certauto"));
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until .build() is called"]
pub struct FileStorageBuilder {
    root: PathBuf,
    config: LockConfig,
}

impl FileStorageBuilder {
    /// How long a lock file may go without being refreshed before other
    /// clients consider its holder dead and break it. Default: 10 s.
    ///
    /// Must be comfortably longer than [`lock_keepalive`](Self::lock_keepalive)
    /// (a few multiples), or held locks may be broken under load.
    pub fn lock_stale_after(mut self, stale_after: Duration) -> Self {
        self.config.stale_after = stale_after;
        self
    }

    /// How often the holder of a lock refreshes its lock file. Default: 5 s.
    pub fn lock_keepalive(mut self, keepalive: Duration) -> Self {
        self.config.keepalive = keepalive.max(MIN_INTERVAL);
        self
    }

    /// How long to wait before checking a held lock again; the wait doubles
    /// after each check, up to 1 s (or this interval, if longer).
    /// Default: 250 ms.
    pub fn lock_poll_interval(mut self, poll_interval: Duration) -> Self {
        self.config.poll_interval = poll_interval.max(MIN_INTERVAL);
        self
    }

    /// The longest [`lock`](Storage::lock) waits for a held lock before
    /// returning [`StorageError::LockTimeout`]; `None` waits forever.
    /// Default: 10 minutes.
    pub fn lock_wait_timeout(mut self, wait_timeout: Option<Duration>) -> Self {
        self.config.wait_timeout = wait_timeout;
        self
    }

    /// Creates the storage. Nothing is touched on disk until it is used.
    pub fn build(self) -> FileStorage {
        if self.config.keepalive >= self.config.stale_after {
            tracing::warn!(
                keepalive = ?self.config.keepalive,
                stale_after = ?self.config.stale_after,
                "file storage: lock keepalive is not shorter than the stale age; held locks may be broken"
            );
        }
        FileStorage {
            inner: Arc::new(Inner {
                root: self.root,
                config: self.config,
                released: Notify::new(),
                #[cfg(test)]
                refreshed: Arc::new(tokio::sync::watch::channel(0).0),
            }),
        }
    }
}

/// A [`Storage`] that keeps each key in a file below a root folder.
///
/// Key `a/b/c` is the file `<root>/a/b/c`. Several processes (or machines
/// sharing a network file system with working `O_EXCL` creation and atomic
/// renames) can share one root: they then share certificates, accounts and locks.
///
/// - Writes are atomic and durable: the value goes to a temporary file in the
///   same folder, which is flushed to disk and renamed over the target, and the
///   folder is then flushed too. A crash leaves either the old or the new value.
/// - Every file is created with mode `0600` and every folder with mode `0700` on
///   Unix, since values may be private keys.
/// - Entries whose name begins with `.` (temporary files among them) are never
///   listed, and keys naming a temporary file are refused.
/// - Blocking file system work runs on Tokio's blocking thread pool.
///
/// # Locks
///
/// The lock `name` is the file `<root>/locks/<name>.lock` (characters outside
/// `[A-Za-z0-9._-]` replaced by `_`), created exclusively and holding JSON
/// `{"created": .., "pid": .., "owner": ..}` (`owner` a random token of this
/// acquisition). While the [`LockGuard`] lives, a background task touches the
/// file's modification time every
/// [`lock_keepalive`](FileStorageBuilder::lock_keepalive) interval, through a
/// file handle it has checked holds its own token, so it never refreshes
/// another holder's lock. A lock is stale, and broken by the next client that
/// wants it, when its modification time is more than
/// [`lock_stale_after`](FileStorageBuilder::lock_stale_after) old, or when the
/// waiting client has seen it unchanged for that long by its own monotonic
/// clock (so a lock stamped in the future by a clock stepped back still expires).
///
/// The holder's guard reports the lock [lost](LockGuard::is_lost) when a
/// refresh finds the file gone or holding another token, or when refreshes
/// kept failing for longer than the stale age (others may have broken it);
/// transient refresh errors are retried at every interval meanwhile.
/// Dropping the guard releases the lock in the background.
#[derive(Clone)]
pub struct FileStorage {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    config: LockConfig,
    /// Woken when this storage releases a lock, so that local waiters need not
    /// wait for their next poll.
    released: Notify,
    /// Counts keepalive refreshes, so tests can wait for them.
    #[cfg(test)]
    refreshed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStorage")
            .field("root", &self.inner.root)
            .field("lock_stale_after", &self.inner.config.stale_after)
            .field("lock_keepalive", &self.inner.config.keepalive)
            .field("lock_poll_interval", &self.inner.config.poll_interval)
            .field("lock_wait_timeout", &self.inner.config.wait_timeout)
            .finish()
    }
}

/// The content of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LockMeta {
    /// When the lock was taken, Unix seconds (informative only: freshness is
    /// the file's modification time).
    created: f64,
    /// The holder's process id (informative only).
    pid: u32,
    /// A random token identifying the holder.
    #[serde(default)]
    owner: String,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A string unique to this process and call (used in temporary file names).
fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{n:x}{nanos:x}", std::process::id())
}

/// A random token identifying one lock acquisition, unique across machines.
fn owner_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => unique_suffix(),
    }
}

/// Whether a file name is one of our temporary files.
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && (name.contains(".tmp-") || name.contains(".stale-"))
}

/// Maps an I/O error on `key` to a [`StorageError`], turning "not found" into
/// [`StorageError::NotFound`].
fn io_err(key: &str, err: io::Error) -> StorageError {
    if err.kind() == io::ErrorKind::NotFound {
        StorageError::NotFound(key.to_owned())
    } else {
        StorageError::Io {
            key: key.to_owned(),
            source: err,
        }
    }
}

/// Maps an I/O error on `key` to [`StorageError::Io`], whatever its kind.
fn io_fail(key: &str, err: io::Error) -> StorageError {
    StorageError::Io {
        key: key.to_owned(),
        source: err,
    }
}

/// Runs blocking file system work on Tokio's blocking pool.
async fn blocking<T, F>(key: &str, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io_fail(key, io::Error::other(e)))?
}

/// Creates `dir` and its missing parents, private to the owner on Unix.
fn create_private_dirs(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Creates a new file (failing if it exists), readable by the owner only on Unix.
fn create_private_file(path: &Path) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Flushes a folder's entries (a rename in it) to disk.
#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    match fs::File::open(dir).and_then(|d| d.sync_all()) {
        Ok(()) => Ok(()),
        // Some file systems cannot fsync a folder; the rename is still atomic.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::InvalidInput | io::ErrorKind::Unsupported
            ) =>
        {
            tracing::debug!(dir = %dir.display(), error = %e, "file storage: cannot fsync folder");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Flushes a folder's entries to disk (not possible through std off Unix).
#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Atomically replaces the file at `path` with `value`, creating its folders.
fn write_atomic(path: &Path, value: &[u8]) -> io::Result<()> {
    write_atomic_hooked(path, value, &|_| true)
}

/// [`write_atomic`], calling `before_rename` with the temporary file once it is
/// written and flushed: returning `false` stops there, leaving the temporary
/// file behind as a crash would (tests use this to simulate one).
fn write_atomic_hooked(
    path: &Path,
    value: &[u8],
    before_rename: &dyn Fn(&Path) -> bool,
) -> io::Result<()> {
    let (Some(dir), Some(leaf)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "storage path has no parent folder or file name",
        ));
    };
    create_private_dirs(dir)?;
    let leaf: String = leaf.to_string_lossy().chars().take(64).collect();
    let (tmp, mut file) = {
        let mut attempt = 0;
        loop {
            let tmp = dir.join(format!(".{leaf}.tmp-{}", unique_suffix()));
            match create_private_file(&tmp) {
                Ok(file) => break (tmp, file),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 8 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    };
    let written = file.write_all(value).and_then(|()| file.sync_all());
    drop(file);
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if !before_rename(&tmp) {
        return Err(io::Error::other("write interrupted before rename"));
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Turns a lock name into a lock file name (without the `.lock` extension).
fn lock_file_stem(name: &str) -> Result<String, StorageError> {
    if name.is_empty() {
        return Err(StorageError::InvalidKey {
            key: String::new(),
            reason: "empty lock name",
        });
    }
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.len() <= MAX_LOCK_NAME {
        return Ok(safe);
    }
    // Too long for a file name: keep a readable start and add a hash of the whole.
    let digest = ring::digest::digest(&ring::digest::SHA256, name.as_bytes());
    let hash: String = digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(format!("{}-{hash}", &safe[..MAX_LOCK_NAME - 33]))
}

/// What a waiting client saw of a lock file: its content and modification time.
#[derive(Debug, Clone, PartialEq, Eq)]
struct LockSnapshot {
    content: Vec<u8>,
    modified: Option<SystemTime>,
}

impl LockSnapshot {
    /// How long ago the file was last refreshed, by the system clock; zero for
    /// a time in the future (a clock stepped back) or unknown.
    fn age(&self) -> Duration {
        self.modified
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .unwrap_or(Duration::ZERO)
    }
}

/// The outcome of one attempt to take a lock.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    /// The lock file is ours.
    Acquired,
    /// Someone else holds the lock; this is what its file looked like.
    Held(LockSnapshot),
    /// The lock file vanished meanwhile: try again at once.
    Retry,
}

/// Reads at most [`MAX_LOCK_FILE`] bytes of `file`.
fn read_bounded(file: &mut fs::File) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    file.take(MAX_LOCK_FILE).read_to_end(&mut content)?;
    Ok(content)
}

/// One attempt to create the lock file at `path`; if it exists, what it holds.
fn try_acquire(path: &Path, owner: &str) -> io::Result<Attempt> {
    if let Some(dir) = path.parent() {
        create_private_dirs(dir)?;
    }
    match create_private_file(path) {
        Ok(mut file) => {
            let meta = LockMeta {
                created: unix_now(),
                pid: std::process::id(),
                owner: owner.to_owned(),
            };
            let written = serde_json::to_vec(&meta)
                .map_err(io::Error::other)
                .and_then(|json| file.write_all(&json))
                .and_then(|()| file.sync_all());
            drop(file);
            if let Err(e) = written {
                let _ = fs::remove_file(path);
                return Err(e);
            }
            return Ok(Attempt::Acquired);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    match snapshot(path) {
        Ok(Some(snap)) => Ok(Attempt::Held(snap)),
        Ok(None) => Ok(Attempt::Retry),
        Err(e) => Err(e),
    }
}

/// The content and modification time of the lock file at `path`, read through
/// one handle; `None` if it does not exist.
fn snapshot(path: &Path) -> io::Result<Option<LockSnapshot>> {
    let mut file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let content = read_bounded(&mut file)?;
    let modified = file.metadata().and_then(|m| m.modified()).ok();
    Ok(Some(LockSnapshot { content, modified }))
}

/// Removes the stale lock file at `path`, which looked like `seen`.
///
/// The file is first renamed aside, so that it is removed only if it is still
/// the stale file: if its holder refreshed it (or another client replaced it)
/// after we looked, it is put back, unless someone has taken the lock since.
fn break_stale(path: &Path, seen: &LockSnapshot) -> io::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "lock".to_owned(), |n| n.to_string_lossy().into_owned());
    let aside = path.with_file_name(format!(".{name}.stale-{}", unique_suffix()));
    match fs::rename(path, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if snapshot(&aside)?.as_ref() == Some(seen) {
        tracing::info!(lock = %path.display(), "file storage: broke a stale lock");
    } else {
        // `hard_link` fails if the lock was taken meanwhile, which is what we want.
        match fs::hard_link(&aside, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                tracing::warn!(lock = %path.display(), error = %e, "file storage: could not restore a lock refreshed while being broken");
            }
        }
    }
    let _ = fs::remove_file(&aside);
    Ok(())
}

/// Whether the lock file named `owner`'s token, once opened.
fn is_owned_by(content: &[u8], owner: &str) -> bool {
    serde_json::from_slice::<LockMeta>(content).is_ok_and(|meta| meta.owner == owner)
}

/// Touches the modification time of the lock file at `path` if it still
/// belongs to `owner`, through the same handle its content was checked on, so
/// a file another client put in its place is never touched. Returns whether
/// the lock is still `owner`'s.
fn refresh_lock(path: &Path, owner: &str) -> io::Result<bool> {
    let mut file = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !is_owned_by(&read_bounded(&mut file)?, owner) {
        return Ok(false);
    }
    file.set_modified(SystemTime::now())?;
    Ok(true)
}

/// Removes the lock file at `path` if it still belongs to `owner`.
fn release_lock(path: &Path, owner: &str) -> io::Result<()> {
    let content = match fs::read(path) {
        Ok(content) => content,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            tracing::warn!(lock = %path.display(), "file storage: lock file vanished while held (broken as stale?)");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    match is_owned_by(&content, owner) {
        true => match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        },
        false => {
            tracing::warn!(lock = %path.display(), "file storage: lock was taken over by another client while held (broken as stale?)");
            Ok(())
        }
    }
}

/// One attempt to create a lock file, running on the blocking pool. Dropped
/// before [`finish`](Self::finish) returns (the `lock` future was
/// cancelled), it waits for the attempt in the background and removes the
/// lock file it created, so a cancelled `lock` never leaves a lock behind.
struct PendingAttempt {
    task: Option<tokio::task::JoinHandle<io::Result<Attempt>>>,
    path: PathBuf,
    owner: String,
}

impl PendingAttempt {
    async fn finish(&mut self, name: &str) -> Result<Attempt, StorageError> {
        let Some(task) = self.task.as_mut() else {
            return Ok(Attempt::Retry);
        };
        let result = task.await;
        self.task = None;
        result
            .map_err(|e| io_fail(name, io::Error::other(e)))?
            .map_err(|e| io_fail(name, e))
    }
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        let Some(task) = self.task.take() else {
            return;
        };
        let (path, owner) = (
            std::mem::take(&mut self.path),
            std::mem::take(&mut self.owner),
        );
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Ok(Ok(Attempt::Acquired)) = task.await {
                let removed =
                    tokio::task::spawn_blocking(move || release_lock(&path, &owner)).await;
                tracing::debug!(
                    ok = matches!(removed, Ok(Ok(()))),
                    "file storage: lock taken by a cancelled lock() removed"
                );
            }
        });
    }
}

/// What the keepalive task of one lock needs.
struct Keepalive {
    path: PathBuf,
    owner: String,
    interval: Duration,
    stale_after: Duration,
    loss: LockLoss,
    #[cfg(test)]
    refreshed: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Keepalive {
    /// Refreshes the lock file every interval until told to stop (or until the
    /// sender is dropped). Reports the lock lost, and stops, when the file is
    /// found to be gone or someone else's, or when refreshing kept failing for
    /// longer than the stale age; a failed refresh is otherwise retried at the
    /// next interval.
    async fn run(self, mut stop: oneshot::Receiver<()>) {
        let mut last_refresh = tokio::time::Instant::now();
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = tokio::time::sleep(self.interval) => {}
            }
            let path = self.path.clone();
            let owner = self.owner.clone();
            let outcome = tokio::task::spawn_blocking(move || refresh_lock(&path, &owner))
                .await
                .map_err(io::Error::other)
                .and_then(|r| r);
            match outcome {
                Ok(true) => {
                    last_refresh = tokio::time::Instant::now();
                    tracing::trace!(lock = %self.path.display(), "file storage: lock refreshed");
                }
                Ok(false) => {
                    tracing::warn!(lock = %self.path.display(), "file storage: held lock was broken or taken over by another client");
                    self.loss.report();
                    return;
                }
                Err(e) if last_refresh.elapsed() >= self.stale_after => {
                    tracing::warn!(lock = %self.path.display(), error = %crate::error::ErrorChain(&e),
                        "file storage: could not refresh the lock for longer than its stale age; it counts as lost");
                    self.loss.report();
                    return;
                }
                Err(e) => {
                    tracing::warn!(lock = %self.path.display(), error = %crate::error::ErrorChain(&e),
                        "file storage: could not refresh the lock; retrying");
                }
            }
            #[cfg(test)]
            self.refreshed.send_modify(|n| *n += 1);
        }
    }
}

/// The OS default storage folder, reading the environment through `var`.
fn default_root_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let path = |name: &str| {
        var(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
    };
    if cfg!(windows) {
        path("APPDATA")
            .or_else(|| path("USERPROFILE").map(|h| h.join("AppData").join("Roaming")))
            .map(|d| d.join("certauto"))
    } else if cfg!(target_os = "macos") {
        path("HOME").map(|h| {
            h.join("Library")
                .join("Application Support")
                .join("certauto")
        })
    } else if cfg!(unix) {
        path("XDG_DATA_HOME")
            .or_else(|| path("HOME").map(|h| h.join(".local").join("share")))
            .map(|d| d.join("certauto"))
    } else {
        None
    }
}

impl FileStorage {
    /// A storage rooted at `root` with the default lock timings. The folder is
    /// created (mode `0700` on Unix) when first written to.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self::builder(root).build()
    }

    /// A builder for a storage rooted at `root`, to change lock timings.
    pub fn builder(root: impl Into<PathBuf>) -> FileStorageBuilder {
        FileStorageBuilder {
            root: root.into(),
            config: LockConfig::default(),
        }
    }

    /// The OS default storage folder, from the environment:
    /// `$XDG_DATA_HOME/certauto` or `$HOME/.local/share/certauto` on Linux and
    /// other Unix systems, `$HOME/Library/Application Support/certauto` on
    /// macOS, `%APPDATA%\certauto` on Windows. `None` when the variables are
    /// unset (or not absolute paths).
    pub fn default_root() -> Option<PathBuf> {
        default_root_from(|name| std::env::var_os(name))
    }

    /// A storage at [`default_root`](Self::default_root) with default timings.
    ///
    /// Fails with [`StorageError::Backend`] when there is no default folder.
    pub fn with_default_root() -> Result<Self, StorageError> {
        Self::default_root().map(Self::new).ok_or_else(|| {
            StorageError::Backend(Box::new(io::Error::new(
                io::ErrorKind::NotFound,
                "no default storage folder: set HOME (or XDG_DATA_HOME, or APPDATA on Windows)",
            )))
        })
    }

    /// The root folder.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The file of `key`, after checking that it stays below the root.
    fn key_path(&self, key: &str) -> Result<PathBuf, StorageError> {
        validate_key(key)?;
        let invalid = |reason| StorageError::InvalidKey {
            key: key.chars().take(300).collect(),
            reason,
        };
        let mut path = self.inner.root.clone();
        for component in key.split('/') {
            if cfg!(windows) && component.contains(['<', '>', ':', '"', '|', '?', '*']) {
                return Err(invalid("character not allowed in Windows file names"));
            }
            let mut parts = Path::new(component).components();
            match (parts.next(), parts.next()) {
                (Some(Component::Normal(part)), None) if part == component => path.push(part),
                _ => return Err(invalid("component is not a plain file name")),
            }
            if is_temp_name(component) {
                return Err(invalid("name reserved for temporary files"));
            }
        }
        Ok(path)
    }

    /// The lock file of `name`, and its file name.
    fn lock_path(&self, name: &str) -> Result<(PathBuf, String), StorageError> {
        let file = format!("{}.lock", lock_file_stem(name)?);
        Ok((self.inner.root.join(LOCKS_DIR).join(&file), file))
    }
}

#[async_trait]
impl Storage for FileStorage {
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.key_path(key).ok()
    }

    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        let path = self.key_path(key)?;
        let value = value.to_vec();
        let len = value.len();
        let owned_key = key.to_owned();
        blocking(key, move || {
            write_atomic(&path, &value).map_err(|e| io_fail(&owned_key, e))
        })
        .await?;
        tracing::debug!(key, len, "file storage: stored");
        Ok(())
    }

    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        let path = self.key_path(key)?;
        let owned_key = key.to_owned();
        blocking(key, move || match fs::read(&path) {
            Ok(value) => Ok(value),
            // A folder holds no value.
            Err(_) if path.is_dir() => Err(StorageError::NotFound(owned_key)),
            Err(e) => Err(io_err(&owned_key, e)),
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        let path = self.key_path(key)?;
        let owned_key = key.to_owned();
        blocking(key, move || {
            let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&owned_key, e))?;
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| io_err(&owned_key, e))
        })
        .await?;
        tracing::debug!(key, "file storage: deleted");
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let path = self.key_path(key)?;
        let owned_key = key.to_owned();
        blocking(key, move || {
            path.try_exists().map_err(|e| io_fail(&owned_key, e))
        })
        .await
    }

    /// Lists the keys below `prefix`; an empty `prefix` lists from the root.
    ///
    /// Returns [`StorageError::NotFound`] when `prefix` does not exist and an
    /// empty list when it holds a value. Entries whose name begins with `.`
    /// are skipped.
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        let base = if prefix.is_empty() {
            self.inner.root.clone()
        } else {
            self.key_path(prefix)?
        };
        let owned_prefix = prefix.to_owned();
        blocking(prefix, move || {
            list_blocking(&base, &owned_prefix, recursive)
        })
        .await
    }

    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        let path = self.key_path(key)?;
        let owned_key = key.to_owned();
        blocking(key, move || {
            let meta = fs::metadata(&path).map_err(|e| io_err(&owned_key, e))?;
            let terminal = !meta.is_dir();
            let size = if terminal { meta.len() } else { 0 };
            Ok(KeyInfo::new(
                owned_key,
                meta.modified().ok(),
                size,
                terminal,
            ))
        })
        .await
    }

    /// Acquires the lock `name`, waiting while another client holds it, for at
    /// most the configured [`lock_wait_timeout`](FileStorageBuilder::lock_wait_timeout).
    ///
    /// Cancel-safe: if the returned future is dropped while the lock file is
    /// being created, the file is removed once its creation finished.
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        let (path, _file) = self.lock_path(name)?;
        let config = self.inner.config;
        let owner = owner_token();
        // A timeout too large to represent is as good as none.
        let deadline = config
            .wait_timeout
            .and_then(|t| tokio::time::Instant::now().checked_add(t));
        let max_delay = config.poll_interval.max(MAX_POLL_INTERVAL);
        let mut delay = config.poll_interval;
        // The lock file as first seen unchanged, and since when (monotonic).
        let mut observed: Option<(LockSnapshot, tokio::time::Instant)> = None;
        loop {
            // Register before trying, so that a local release in between wakes us.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();

            let attempt = {
                let (p, o) = (path.clone(), owner.clone());
                let task = tokio::task::spawn_blocking(move || try_acquire(&p, &o));
                // If this future is dropped while the file is being created,
                // the attempt's file (if it was created) is removed.
                let mut pending = PendingAttempt {
                    task: Some(task),
                    path: path.clone(),
                    owner: owner.clone(),
                };
                pending.finish(name).await?
            };
            let now = tokio::time::Instant::now();
            let seen = match attempt {
                Attempt::Acquired => break,
                Attempt::Retry => continue,
                Attempt::Held(seen) => seen,
            };
            let unchanged_since = match &observed {
                Some((before, since)) if *before == seen => *since,
                _ => {
                    observed = Some((seen.clone(), now));
                    now
                }
            };
            if seen.age() > config.stale_after || now - unchanged_since > config.stale_after {
                let path = path.clone();
                let lock_name = name.to_owned();
                blocking(name, move || {
                    break_stale(&path, &seen).map_err(|e| io_fail(&lock_name, e))
                })
                .await?;
                observed = None;
                continue;
            }
            let wait = match deadline {
                Some(deadline) if now >= deadline => {
                    tracing::debug!(lock = name, "file storage: timed out waiting for lock");
                    return Err(StorageError::LockTimeout(name.to_owned()));
                }
                Some(deadline) => delay.min(deadline - now),
                None => delay,
            };
            tracing::debug!(
                lock = name,
                ?wait,
                "file storage: lock held elsewhere, waiting"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut released => {}
            }
            delay = delay.saturating_mul(2).min(max_delay);
        }

        let loss = LockLoss::new();
        let (stop, stop_rx) = oneshot::channel();
        let keepalive = Keepalive {
            path: path.clone(),
            owner: owner.clone(),
            interval: config.keepalive,
            stale_after: config.stale_after,
            loss: loss.clone(),
            #[cfg(test)]
            refreshed: self.inner.refreshed.clone(),
        };
        let keepalive = tokio::spawn(keepalive.run(stop_rx));
        tracing::debug!(lock = name, "file storage: lock acquired");
        let inner = self.inner.clone();
        let lock_name = name.to_owned();
        Ok(LockGuard::new(name, &loss, move || async move {
            let _ = stop.send(());
            // Wait for a refresh in progress, so it cannot touch the file below.
            let _ = keepalive.await;
            let released = blocking(&lock_name, {
                let lock_name = lock_name.clone();
                move || release_lock(&path, &owner).map_err(|e| io_fail(&lock_name, e))
            })
            .await;
            inner.released.notify_waiters();
            released?;
            tracing::debug!(lock = %lock_name, "file storage: lock released");
            Ok(())
        }))
    }
}

/// Lists the keys below `base` (the folder of `prefix`).
fn list_blocking(base: &Path, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
    match fs::metadata(base) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Ok(Vec::new()),
        Err(e) if e.kind() == io::ErrorKind::NotFound && prefix.is_empty() => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(io_err(prefix, e)),
    }
    let mut keys = Vec::new();
    walk(base, prefix, recursive, &mut keys).map_err(|e| io_fail(prefix, e))?;
    keys.sort();
    Ok(keys)
}

/// Adds the keys of folder `dir` (whose key is `prefix`) to `keys`.
fn walk(dir: &Path, prefix: &str, recursive: bool, keys: &mut Vec<String>) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        // Deleted while we list: nothing below it any more.
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let file_name = entry.file_name();
        let Some(name) = file_name.to_str() else {
            tracing::debug!(dir = %dir.display(), "file storage: skipping a non-UTF-8 file name");
            continue;
        };
        if name.starts_with('.') || validate_key(name).is_err() {
            continue;
        }
        let key = if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}/{name}")
        };
        if !recursive {
            keys.push(key);
            continue;
        }
        let file_type = match entry.file_type() {
            Ok(file_type) => file_type,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if file_type.is_dir() {
            walk(&entry.path(), &key, true, keys)?;
        } else {
            keys.push(key);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, AtomicUsize};

    use super::*;

    /// Upper bound for anything that should finish promptly; only fails hung tests.
    const HANG: Duration = Duration::from_secs(30);

    fn storage(root: &Path) -> FileStorage {
        FileStorage::builder(root)
            .lock_poll_interval(Duration::from_millis(5))
            .build()
    }

    fn read_lock(path: &Path) -> LockMeta {
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    #[tokio::test]
    async fn round_trip_overwrite_and_stat() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("root"));
        s.store("a/b/c", b"one").await.unwrap();
        assert_eq!(s.load("a/b/c").await.unwrap(), b"one");
        assert_eq!(
            fs::read(dir.path().join("root/a/b/c")).unwrap(),
            b"one",
            "key maps to a path below the root"
        );
        s.store("a/b/c", b"second").await.unwrap();
        assert_eq!(s.load("a/b/c").await.unwrap(), b"second");
        s.store("empty", b"").await.unwrap();
        assert_eq!(s.load("empty").await.unwrap(), b"");

        let info = s.stat("a/b/c").await.unwrap();
        assert_eq!(info.key, "a/b/c");
        assert!(info.is_terminal);
        assert_eq!(info.size, 6);
        assert!(info.modified.is_some());
        let info = s.stat("a/b").await.unwrap();
        assert!(!info.is_terminal);
        assert_eq!(info.size, 0);

        assert!(s.exists("a/b/c").await.unwrap());
        assert!(s.exists("a").await.unwrap());
        assert!(!s.exists("a/x").await.unwrap());
        // A clone sees the same files.
        assert_eq!(s.clone().load("a/b/c").await.unwrap(), b"second");
        assert_eq!(s.root(), dir.path().join("root"));
        assert!(format!("{s:?}").contains("FileStorage"));
    }

    #[tokio::test]
    async fn missing_keys_are_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        assert!(matches!(s.load("nope").await, Err(StorageError::NotFound(k)) if k == "nope"));
        assert!(s.stat("a/nope").await.unwrap_err().is_not_found());
        assert!(s.delete("nope").await.unwrap_err().is_not_found());
        assert!(s.list("nope", false).await.unwrap_err().is_not_found());
        assert!(!s.exists("nope").await.unwrap());
        s.store("d/v", b"x").await.unwrap();
        // A folder holds no value.
        assert!(s.load("d").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn list_recursive_and_not() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("root"));
        assert!(
            s.list("", true).await.unwrap().is_empty(),
            "missing root lists as empty"
        );
        for k in ["a/x", "a/b/c", "a/b/d/e", "a-b/z", "a0", "b"] {
            s.store(k, k.as_bytes()).await.unwrap();
        }
        // Dot-files (as left by other tools or interrupted writes) are not listed.
        fs::write(dir.path().join("root/a/.hidden"), b"x").unwrap();
        assert_eq!(s.list("a", false).await.unwrap(), vec!["a/b", "a/x"]);
        assert_eq!(
            s.list("a", true).await.unwrap(),
            vec!["a/b/c", "a/b/d/e", "a/x"]
        );
        assert_eq!(s.list("a/b", false).await.unwrap(), vec!["a/b/c", "a/b/d"]);
        assert_eq!(
            s.list("", false).await.unwrap(),
            vec!["a", "a-b", "a0", "b"]
        );
        assert_eq!(
            s.list("", true).await.unwrap(),
            vec!["a-b/z", "a/b/c", "a/b/d/e", "a/x", "a0", "b"]
        );
        assert!(s.list("a/x", true).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn delete_file_and_tree() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        for k in ["a/b/c", "a/b/d", "a/e", "ab"] {
            s.store(k, b"v").await.unwrap();
        }
        s.delete("a/e").await.unwrap();
        assert!(s.load("a/e").await.unwrap_err().is_not_found());
        s.delete("a/b").await.unwrap();
        assert!(!s.exists("a/b/c").await.unwrap());
        assert!(!s.exists("a/b").await.unwrap());
        s.delete("a").await.unwrap();
        assert!(!s.exists("a").await.unwrap());
        assert_eq!(s.load("ab").await.unwrap(), b"v");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let s = storage(&root);
        s.store("x/y/secret.key", b"PRIVATE").await.unwrap();
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(root.join("x/y/secret.key")), 0o600);
        // Overwriting an existing file with looser permissions makes it private.
        fs::set_permissions(
            root.join("x/y/secret.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        s.store("x/y/secret.key", b"NEW").await.unwrap();
        assert_eq!(mode(root.join("x/y/secret.key")), 0o600);
        assert_eq!(mode(root.clone()), 0o700);
        assert_eq!(mode(root.join("x")), 0o700);
        assert_eq!(mode(root.join("x/y")), 0o700);

        let lock = s.lock("l").await.unwrap();
        assert_eq!(mode(root.join("locks")), 0o700);
        assert_eq!(mode(root.join("locks/l.lock")), 0o600);
        lock.release().await.unwrap();
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path().join("root"));
        let bad = [
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "a\\..\\..\\evil",
            "a/./b",
            "a//b",
            "",
            "a/.x.tmp-1-2",
        ];
        for key in bad {
            let invalid =
                |r: Result<(), StorageError>| matches!(r, Err(StorageError::InvalidKey { .. }));
            assert!(invalid(s.store(key, b"x").await), "store {key:?}");
            assert!(invalid(s.load(key).await.map(drop)), "load {key:?}");
            assert!(invalid(s.delete(key).await), "delete {key:?}");
            assert!(invalid(s.exists(key).await.map(drop)), "exists {key:?}");
            assert!(invalid(s.stat(key).await.map(drop)), "stat {key:?}");
            if !key.is_empty() {
                assert!(invalid(s.list(key, true).await.map(drop)), "list {key:?}");
            }
        }
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "nothing written: {names:?}");
    }

    #[tokio::test]
    async fn crash_before_rename_keeps_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::new(dir.path());
        s.store("certs/site.key", b"old").await.unwrap();
        let path = s.key_path("certs/site.key").unwrap();

        let crashed = write_atomic_hooked(&path, b"new value", &|tmp| {
            // The new value is fully on disk in the temporary file at this point.
            assert_eq!(fs::read(tmp).unwrap(), b"new value");
            false
        });
        assert!(crashed.is_err());

        let leftovers: Vec<String> = fs::read_dir(dir.path().join("certs"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n != "site.key")
            .collect();
        assert_eq!(
            leftovers.len(),
            1,
            "the interrupted write left its temporary file"
        );
        assert!(leftovers[0].starts_with(".site.key.tmp-"));

        assert_eq!(s.load("certs/site.key").await.unwrap(), b"old");
        assert_eq!(
            s.list("certs", false).await.unwrap(),
            vec!["certs/site.key"]
        );
        assert_eq!(s.list("", true).await.unwrap(), vec!["certs/site.key"]);
        let tmp_key = format!("certs/{}", leftovers[0]);
        assert!(matches!(
            s.load(&tmp_key).await,
            Err(StorageError::InvalidKey { .. })
        ));

        // Later writes still work.
        s.store("certs/site.key", b"newer").await.unwrap();
        assert_eq!(s.load("certs/site.key").await.unwrap(), b"newer");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_excludes_another_instance() {
        let dir = tempfile::tempdir().unwrap();
        let a = storage(dir.path());
        let b = storage(dir.path());
        let held = a.lock("cert_example.com").await.unwrap();

        // Another instance cannot take it...
        let impatient = FileStorage::builder(dir.path())
            .lock_wait_timeout(Some(Duration::ZERO))
            .build();
        assert!(matches!(
            impatient.lock("cert_example.com").await,
            Err(StorageError::LockTimeout(_))
        ));
        // ...and waits until the holder releases.
        let a_released = Arc::new(AtomicBool::new(false));
        let (acquired_tx, mut acquired_rx) = oneshot::channel();
        let waiter = {
            let a_released = a_released.clone();
            tokio::spawn(async move {
                let lock = b.lock("cert_example.com").await.unwrap();
                assert!(
                    a_released.load(Ordering::SeqCst),
                    "second instance took the lock while the first held it"
                );
                acquired_tx.send(()).unwrap();
                lock
            })
        };
        // The same instance (or a clone) waits too.
        let clone = a.clone();
        let same_instance =
            tokio::time::timeout(Duration::from_millis(20), clone.lock("cert_example.com"));
        assert!(
            same_instance.await.is_err(),
            "lock taken twice by one instance"
        );
        assert!(acquired_rx.try_recv().is_err());

        a_released.store(true, Ordering::SeqCst);
        held.release().await.unwrap();
        let second = tokio::time::timeout(HANG, waiter).await.unwrap().unwrap();
        acquired_rx.await.unwrap();
        second.release().await.unwrap();
        assert!(!dir.path().join("locks/cert_example.com.lock").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lock_is_mutual_exclusion_under_contention() {
        let dir = tempfile::tempdir().unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 {
            // Separate instances, as separate processes would have.
            let s = storage(dir.path());
            let inside = inside.clone();
            tasks.push(tokio::spawn(async move {
                for _ in 0..5 {
                    let lock = s.lock("shared").await.unwrap();
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    tokio::task::yield_now().await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                    lock.release().await.unwrap();
                }
            }));
        }
        for task in tasks {
            tokio::time::timeout(HANG, task).await.unwrap().unwrap();
        }
    }

    fn write_lock_file(path: &Path, owner: &str, modified: SystemTime) {
        let meta = LockMeta {
            created: unix_now(),
            pid: 1,
            owner: owner.to_owned(),
        };
        fs::write(path, serde_json::to_vec(&meta).unwrap()).unwrap();
        fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(modified)
            .unwrap();
    }

    #[tokio::test]
    async fn stale_lock_is_broken() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::builder(dir.path())
            .lock_stale_after(Duration::from_secs(5))
            .lock_poll_interval(Duration::from_millis(5))
            .build();
        let locks = dir.path().join("locks");
        fs::create_dir_all(&locks).unwrap();

        // A holder that died an hour ago.
        write_lock_file(
            &locks.join("dead.lock"),
            "dead",
            SystemTime::now() - Duration::from_secs(3600),
        );
        let lock = tokio::time::timeout(HANG, s.lock("dead"))
            .await
            .unwrap()
            .unwrap();
        assert_ne!(read_lock(&locks.join("dead.lock")).owner, "dead");
        lock.release().await.unwrap();

        // An unreadable lock file, judged by its modification time.
        let garbage = locks.join("garbage.lock");
        fs::write(&garbage, b"not json").unwrap();
        fs::File::options()
            .write(true)
            .open(&garbage)
            .unwrap()
            .set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        tokio::time::timeout(HANG, s.lock("garbage"))
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();

        // A fresh lock file is not broken.
        write_lock_file(&locks.join("alive.lock"), "alive", SystemTime::now());
        let impatient = FileStorage::builder(dir.path())
            .lock_stale_after(Duration::from_secs(3600))
            .lock_wait_timeout(Some(Duration::ZERO))
            .build();
        assert!(matches!(
            impatient.lock("alive").await,
            Err(StorageError::LockTimeout(_))
        ));
        assert_eq!(read_lock(&locks.join("alive.lock")).owner, "alive");
        // Nothing was left behind by breaking locks.
        let mut names: Vec<_> = fs::read_dir(&locks)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, vec!["alive.lock"]);
    }

    /// A dead holder's lock stamped an hour in the future (the clock was
    /// stepped back since) is broken once it has stayed unchanged for the
    /// stale age, measured on the waiter's monotonic clock.
    #[tokio::test(start_paused = true)]
    async fn lock_from_the_future_does_not_wedge() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        fs::create_dir_all(&locks).unwrap();
        write_lock_file(
            &locks.join("future.lock"),
            "dead",
            SystemTime::now() + Duration::from_secs(3600),
        );
        let s = FileStorage::builder(dir.path())
            .lock_stale_after(Duration::from_secs(10))
            .lock_poll_interval(Duration::from_millis(100))
            .build();
        let lock = s.lock("future").await.unwrap();
        assert_ne!(read_lock(&locks.join("future.lock")).owner, "dead");
        lock.release().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keepalive_keeps_lock_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let stale_after = Duration::from_millis(500);
        let make = || {
            FileStorage::builder(dir.path())
                .lock_stale_after(stale_after)
                .lock_keepalive(Duration::from_millis(20))
                .lock_poll_interval(Duration::from_millis(5))
                .build()
        };
        let a = make();
        let b = make();
        let mut refreshes = a.inner.refreshed.subscribe();
        let held = a.lock("k").await.unwrap();
        let path = dir.path().join("locks/k.lock");
        let first = read_lock(&path);
        let mtime = || fs::metadata(&path).unwrap().modified().unwrap();
        let first_mtime = mtime();

        let (acquired_tx, mut acquired_rx) = oneshot::channel();
        let waiter = tokio::spawn(async move {
            let lock = b.lock("k").await.unwrap();
            acquired_tx.send(()).unwrap();
            lock
        });

        // Wait (by keepalive events, not by time) until the lock has been held
        // longer than `stale_after`: without keepalive it would now be broken.
        tokio::time::timeout(HANG, async {
            loop {
                refreshes.changed().await.unwrap();
                let meta = read_lock(&path);
                assert_eq!(meta.created, first.created);
                assert_eq!(meta.owner, first.owner);
                if mtime().duration_since(first_mtime).unwrap_or_default() > 2 * stale_after {
                    break;
                }
            }
        })
        .await
        .unwrap();
        assert!(
            acquired_rx.try_recv().is_err(),
            "a kept-alive lock was broken"
        );
        assert!(!waiter.is_finished());
        assert!(!held.is_lost());

        held.release().await.unwrap();
        let second = tokio::time::timeout(HANG, waiter).await.unwrap().unwrap();
        acquired_rx.await.unwrap();
        second.release().await.unwrap();
    }

    /// A lock broken under its holder (here: its file replaced by another
    /// client's) is reported lost at the next refresh; the refresh does not
    /// touch the other client's file, and releasing leaves it in place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broken_lock_is_reported_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::builder(dir.path())
            .lock_keepalive(Duration::from_millis(10))
            .build();
        let held = s.lock("k").await.unwrap();
        let path = dir.path().join("locks/k.lock");
        let long_ago = SystemTime::now() - Duration::from_secs(3600);
        write_lock_file(&path, "someone-else", long_ago);
        tokio::time::timeout(HANG, held.lost()).await.unwrap();
        assert!(matches!(held.ensure_held(), Err(StorageError::LockLost(_))));
        // Never refreshed: the modification time is still the other's.
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), long_ago);
        held.release().await.unwrap();
        assert_eq!(read_lock(&path).owner, "someone-else");
    }

    /// A lock whose file vanished (broken as stale) is reported lost too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vanished_lock_is_reported_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::builder(dir.path())
            .lock_keepalive(Duration::from_millis(10))
            .build();
        let held = s.lock("k").await.unwrap();
        fs::remove_file(dir.path().join("locks/k.lock")).unwrap();
        tokio::time::timeout(HANG, held.lost()).await.unwrap();
        held.release().await.unwrap();
    }

    /// A refresh that keeps failing (the lock folder became unwritable) is
    /// retried, and the lock counts as lost once refreshes failed for longer
    /// than the stale age.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failing_refresh_is_retried_then_lost() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStorage::builder(dir.path())
            .lock_keepalive(Duration::from_millis(10))
            .lock_stale_after(Duration::from_millis(200))
            .build();
        let mut refreshes = s.inner.refreshed.subscribe();
        let held = s.lock("k").await.unwrap();
        let path = dir.path().join("locks/k.lock");
        // A directory in place of the file: opening it for writing fails
        // with an error other than "not found", for root too.
        let saved = fs::read(&path).unwrap();
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        // At least two failed refreshes are retried before the loss.
        tokio::time::timeout(HANG, async {
            let mut failures = 0;
            while failures < 2 && !held.is_lost() {
                refreshes.changed().await.unwrap();
                failures += 1;
            }
        })
        .await
        .unwrap();
        tokio::time::timeout(HANG, held.lost()).await.unwrap();
        fs::remove_dir(&path).unwrap();
        fs::write(&path, saved).unwrap();
        held.release().await.unwrap();
    }

    /// A `lock` call aborted at any point (before, during or after the file
    /// is created) leaves no lock behind: another instance, which would wait
    /// an hour for a stale lock, gets it at once every time.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_lock_call_leaves_no_lock() {
        let dir = tempfile::tempdir().unwrap();
        let make = || {
            FileStorage::builder(dir.path())
                .lock_stale_after(Duration::from_secs(3600))
                .lock_poll_interval(Duration::from_millis(1))
                .build()
        };
        let (a, b) = (make(), make());
        for round in 0..50 {
            let a = a.clone();
            let task = tokio::spawn(async move { a.lock("k").await.map(drop) });
            for _ in 0..round % 7 {
                tokio::task::yield_now().await;
            }
            task.abort();
            let _ = task.await;
            let lock = tokio::time::timeout(HANG, b.lock("k"))
                .await
                .unwrap_or_else(|_| panic!("round {round}: a cancelled lock() left the lock held"))
                .unwrap();
            lock.release().await.unwrap();
        }
    }

    /// A guard dropped unreleased (a cancelled future) frees the lock at once
    /// for another instance, without waiting for it to go stale.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dropped_guard_releases() {
        let dir = tempfile::tempdir().unwrap();
        let a = storage(dir.path());
        let b = FileStorage::builder(dir.path())
            .lock_stale_after(Duration::from_secs(3600))
            .build();
        let held = a.lock("k").await.unwrap();
        let cancelled = tokio::time::timeout(Duration::from_millis(10), async {
            let _held = held;
            std::future::pending::<()>().await;
        });
        assert!(cancelled.await.is_err());
        tokio::time::timeout(HANG, b.lock("k"))
            .await
            .unwrap()
            .unwrap()
            .release()
            .await
            .unwrap();
        assert!(matches!(
            a.lock("").await,
            Err(StorageError::InvalidKey { .. })
        ));
    }

    #[test]
    fn lock_names_are_sanitised() {
        assert_eq!(
            lock_file_stem("cert_*.example.com").unwrap(),
            "cert__.example.com"
        );
        assert_eq!(
            lock_file_stem("../../etc/passwd").unwrap(),
            ".._.._etc_passwd"
        );
        assert!(lock_file_stem("").is_err());
        let long = "x".repeat(300);
        let stem = lock_file_stem(&long).unwrap();
        assert_eq!(stem.len(), MAX_LOCK_NAME);
        assert_ne!(stem, lock_file_stem(&"x".repeat(301)).unwrap());
    }

    #[test]
    fn default_root_follows_the_os() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        if cfg!(windows) {
            assert_eq!(
                default_root_from(env(&[("APPDATA", r"C:\Users\me\AppData\Roaming")])),
                Some(PathBuf::from(r"C:\Users\me\AppData\Roaming\certauto"))
            );
        } else if cfg!(target_os = "macos") {
            assert_eq!(
                default_root_from(env(&[("HOME", "/Users/me")])),
                Some(PathBuf::from(
                    "/Users/me/Library/Application Support/certauto"
                ))
            );
        } else {
            assert_eq!(
                default_root_from(env(&[("HOME", "/home/me"), ("XDG_DATA_HOME", "/data")])),
                Some(PathBuf::from("/data/certauto"))
            );
            assert_eq!(
                default_root_from(env(&[("HOME", "/home/me"), ("XDG_DATA_HOME", "relative")])),
                Some(PathBuf::from("/home/me/.local/share/certauto"))
            );
        }
        assert_eq!(default_root_from(env(&[])), None);
    }
}
