//! A [`Storage`] backend on the local file system.
//!
//! `atomic` writes values, `lock` implements [`Storage::lock`] with lock
//! files, `root` finds the OS default folder.

mod atomic;
pub(crate) mod lock;
mod root;
mod temporaries;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;

use self::atomic::{BeforeRename, is_temp_name, write_atomic, write_atomic_hooked};
use self::lock::{LockConfig, MIN_INTERVAL};
use super::{KeyInfo, LockGuard, Storage, StorageError, validate_key};

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
                temporaries_cursor: std::sync::Mutex::new(None),
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
///   listed, and keys naming a temporary file are refused. Temporary files a
///   crash left behind are removed by
///   [`remove_stale_temporaries`](Storage::remove_stale_temporaries), which
///   storage cleaning ([`Config::clean_storage`](crate::Config::clean_storage)) calls.
/// - Blocking file system work runs on Tokio's blocking thread pool.
///
/// # Locks
///
/// The lock `name` is the file `<root>/locks/<name>.lock` (characters outside
/// `[A-Za-z0-9._-]` replaced by `_`), created exclusively and holding JSON
/// `{"created": .., "pid": .., "owner": .., "fence": ..}` (`owner` a random
/// token of this acquisition). While the [`LockGuard`] lives, a background task touches the
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
///
/// # Fencing
///
/// Each acquisition gets a [fence](LockGuard::fence), written into its lock
/// file (`"fence": ..`) through the handle that created it: the next number
/// of the root's one counter `<root>/locks/.fences`, and at least the current
/// time in microseconds (so fences of one name keep increasing even when two
/// acquisitions of different names bump the counter at once).
/// [`store_fenced`](Storage::store_fenced) writes the value to its temporary
/// file and then, just before renaming it into place, checks that the lock
/// file still names the guard's fence; [`delete_fenced`](Storage::delete_fenced)
/// checks the same just before the unlink (or the folder's removal).
/// Otherwise the write is refused with [`StorageError::LockLost`]. A file
/// system offers no compare-and-rename, so one window remains: a holder
/// paused *between* that check and the rename (microseconds) can still
/// overwrite a newer holder's value. A holder paused anywhere else (most of its work) is
/// fenced off. `RedisStorage` checks the fence and writes in one atomic
/// step, and [`MemoryStorage`](crate::MemoryStorage) under one mutex, with
/// no such window.
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
    /// Where the next walk for stale temporaries starts.
    temporaries_cursor: std::sync::Mutex<temporaries::Cursor>,
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

/// Maps an I/O error on `key` to a [`StorageError`], turning "not found" into
/// [`StorageError::NotFound`].
pub(super) fn io_err(key: &str, err: io::Error) -> StorageError {
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
pub(super) fn io_fail(key: &str, err: io::Error) -> StorageError {
    StorageError::Io {
        key: key.to_owned(),
        source: err,
    }
}

/// Runs blocking file system work on Tokio's blocking pool.
pub(super) async fn blocking<T, F>(key: &str, work: F) -> Result<T, StorageError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| io_fail(key, io::Error::other(e)))?
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
}

#[async_trait]
impl Storage for FileStorage {
    fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.key_path(key).ok()
    }

    /// Removes the temporary files of writes (and of stale-lock breaking)
    /// that a crash left anywhere below the root, modified more than
    /// `older_than` ago by the system clock (file times are the system's),
    /// in one bounded walk that resumes where this storage's previous walk
    /// stopped; reports their paths relative to the root, and the folders
    /// and files it skipped (unreadable) as [`StorageError::Io`] naming them.
    async fn remove_stale_temporaries(
        &self,
        older_than: Duration,
    ) -> Result<super::TemporariesSweep, StorageError> {
        let inner = self.inner.clone();
        blocking("", move || {
            let mut cursor = inner
                .temporaries_cursor
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let now = std::time::SystemTime::now();
            let sweep = temporaries::remove_stale(&inner.root, older_than, now, &mut cursor);
            let skipped = sweep.skipped.into_iter();
            Ok(super::TemporariesSweep::new(
                sweep.removed,
                skipped.map(|(path, e)| io_fail(&path, e)).collect(),
            ))
        })
        .await
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

    /// Stores `value` at `key` if `guard`'s acquisition still holds its
    /// lock, checked just before the rename that makes the write visible (see
    /// [Fencing](FileStorage#fencing) for the window that remains). A guard
    /// without a fence (not from a `FileStorage`) is refused.
    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        guard.ensure_held()?;
        let lost = || StorageError::LockLost(guard.name().to_owned());
        let Some(fence) = guard.fence() else {
            return Err(lost());
        };
        let path = self.key_path(key)?;
        let (lock_path, _file) = self.lock_path(guard.name())?;
        let value = value.to_vec();
        let owned_key = key.to_owned();
        let renamed = blocking(key, move || {
            write_atomic_hooked(&path, &value, &|_| {
                Ok(if lock::holds(&lock_path, fence)? {
                    BeforeRename::Rename
                } else {
                    BeforeRename::Refuse
                })
            })
            .map_err(|e| io_fail(&owned_key, e))
        })
        .await?;
        if !renamed {
            tracing::warn!(
                lock = guard.name(),
                key,
                fence,
                "file storage: fenced write refused: the lock was taken over"
            );
            return Err(lost());
        }
        tracing::debug!(key, fence, "file storage: stored (fenced)");
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

    /// Deletes `key` (a file, or a folder with everything below it) if
    /// `guard`'s acquisition still holds its lock, checked just before the
    /// unlink or the folder's removal (the same check, and the same window,
    /// as [`store_fenced`](Storage::store_fenced): see
    /// [Fencing](FileStorage#fencing)).
    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        guard.ensure_held()?;
        let lost = || StorageError::LockLost(guard.name().to_owned());
        let Some(fence) = guard.fence() else {
            return Err(lost());
        };
        let path = self.key_path(key)?;
        let (lock_path, _file) = self.lock_path(guard.name())?;
        let owned_key = key.to_owned();
        let deleted = blocking(key, move || {
            let meta = fs::symlink_metadata(&path).map_err(|e| io_err(&owned_key, e))?;
            if !lock::holds(&lock_path, fence).map_err(|e| io_fail(&owned_key, e))? {
                return Ok(false);
            }
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| io_err(&owned_key, e))?;
            Ok(true)
        })
        .await?;
        if !deleted {
            tracing::warn!(
                lock = guard.name(),
                key,
                fence,
                "file storage: fenced delete refused: the lock was taken over"
            );
            return Err(lost());
        }
        tracing::debug!(key, fence, "file storage: deleted (fenced)");
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
        self.acquire_lock(name).await
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
