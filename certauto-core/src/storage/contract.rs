//! The storage contract: the [`Storage`] trait (what every backend MUST
//! guarantee, locks included), its errors and [`KeyInfo`]. Re-exported at the
//! crate root.

use std::fmt::Debug;
use std::time::SystemTime;

use async_trait::async_trait;

use super::LockGuard;

/// Errors from a [`Storage`] backend.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The key does not exist. Backends MUST return this (and not another
    /// variant) for a missing key, so callers can tell absence from failure.
    #[error("storage key {0:?} not found")]
    NotFound(String),
    /// The key is not acceptable to the backend (empty component, `..`, absolute path...).
    #[error("invalid storage key {key:?}: {reason}")]
    InvalidKey {
        /// The refused key.
        key: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// Waiting for a lock took longer than allowed.
    #[error("timed out waiting for lock {0:?}")]
    LockTimeout(String),
    /// The lock was lost while held: broken as stale by another client (its
    /// keepalive could not refresh it in time) or taken over. The holder MUST
    /// NOT write what the lock protects.
    #[error("lock {0:?} was lost while held (broken or taken over by another client)")]
    LockLost(String),
    /// An I/O error from the backend.
    #[error("storage I/O error on {key:?}: {source}")]
    Io {
        /// The key being accessed.
        key: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A backend-specific failure (network store unreachable, ...).
    #[error("storage backend error: {0}")]
    Backend(Box<dyn std::error::Error + Send + Sync>),
    /// A network backend could not be reached or did not answer in time
    /// (server down, connection refused or dropped, timeout); retrying later
    /// may succeed. The source says what failed (never a credential).
    #[error("storage backend unavailable")]
    Unavailable {
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl StorageError {
    /// Whether this error means "the key does not exist".
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound(_))
    }
}

/// Facts about a stored key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyInfo {
    /// The key.
    pub key: String,
    /// When the value was last written, if the backend knows.
    pub modified: Option<SystemTime>,
    /// The size of the value in bytes (0 for a non-terminal key).
    pub size: u64,
    /// Whether the key holds a value (true) or only has keys below it (false).
    pub is_terminal: bool,
}

impl KeyInfo {
    /// Creates a `KeyInfo`.
    pub fn new(key: String, modified: Option<SystemTime>, size: u64, is_terminal: bool) -> Self {
        Self {
            key,
            modified,
            size,
            is_terminal,
        }
    }
}

/// What one [`Storage::remove_stale_temporaries`] sweep did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct TemporariesSweep {
    /// The temporaries removed, each described by a path or key.
    pub removed: Vec<String>,
    /// What the sweep skipped and why: a folder it could not read, a file it
    /// could not look at or remove. A later sweep tries them again.
    pub skipped: Vec<StorageError>,
}

impl TemporariesSweep {
    /// A sweep that removed `removed` and skipped `skipped`.
    pub fn new(removed: Vec<String>, skipped: Vec<StorageError>) -> Self {
        Self { removed, skipped }
    }
}

/// A key-value store with locks, shared by every instance of a cluster.
///
/// # Contract
///
/// Implementations MUST:
/// - be safe to call concurrently from many tasks and, for shared backends, from
///   many processes or machines;
/// - make [`store`](Storage::store) atomic: a concurrent or later
///   [`load`](Storage::load) sees either the old value or the new one, never a
///   mix, and a crash during `store` leaves the old value intact;
/// - return [`StorageError::NotFound`] from `load`, `delete` and `stat` when the
///   key does not exist (a `delete` of a missing key may instead succeed);
/// - treat keys as `/`-separated paths: `list("a", false)` returns the keys
///   directly below `a` (both values and "directories"), `list("a", true)` returns
///   every terminal key below `a`; both return full keys, and an unknown prefix
///   gives [`StorageError::NotFound`] or an empty list;
/// - implement [`lock`](Storage::lock) as described in [Locks](#locks).
///
/// Values may hold private keys: backends MUST keep them readable by their owner
/// only (as [`FileStorage`](crate::FileStorage) does with mode 0600).
///
/// # Locks
///
/// [`lock`](Storage::lock) is a mutual-exclusion lock across every client of
/// the storage (every task, process and machine sharing it), returning a
/// [`LockGuard`]. A backend MUST guarantee:
/// - **exclusion**: while a guard is held and not [lost](LockGuard::is_lost),
///   no other client acquires the same lock;
/// - **waiting**: `lock` waits while another client holds the lock, and
///   fails with [`StorageError::LockTimeout`] after a bounded wait of its
///   choosing (never forever);
/// - **expiry**: a lock whose holder died (crash, lost network) expires, so
///   work resumes: the holder keeps its lock alive while it holds the guard
///   (a keepalive), and a lock not kept alive for the backend's expiry time
///   may be broken by another client ([`FileStorage`](crate::FileStorage): 10 s by default);
/// - **loss is reported**: when the backend finds that the holder's lock was
///   broken or taken over, or that it could not keep it alive for longer than
///   the expiry (so others may have broken it), it reports the loss through
///   the [`LockLoss`](crate::LockLoss) it gave the guard. It never refreshes or releases
///   another holder's lock;
/// - **clock steps**: a lock whose recorded time is in the future (a clock
///   stepped back) still expires once it is no longer kept alive;
/// - **release**: the guard's release action frees the lock only if it is
///   still this holder's, and is safe to run from a background task (it runs
///   there when the guard is dropped unreleased, e.g. by a cancelled future).
///
/// A holder may assume that, until the guard reports a loss, what it reads
/// under the lock is not changed by other clients honouring the lock. It MUST
/// write what the lock protects through [`store_fenced`](Storage::store_fenced)
/// (or call [`LockGuard::ensure_held`] before each other write) and give up
/// (not write) once it fails: a loss is noticed within one keepalive interval,
/// so only a fenced write protects a holder that was paused past its lease.
#[async_trait]
pub trait Storage: Send + Sync + Debug {
    /// Stores `value` at `key`, replacing any previous value atomically.
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError>;
    /// Loads the value at `key`.
    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError>;
    /// Deletes `key` and, if it is a directory, everything below it.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Whether `key` exists.
    async fn exists(&self, key: &str) -> Result<bool, StorageError>;
    /// Lists the keys below `prefix`, see the trait docs.
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError>;
    /// Facts about `key`.
    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError>;
    /// Acquires the lock `name`, waiting while another client holds it (see
    /// [Locks](#locks)). The lock is held until the guard is released or dropped.
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError>;

    /// Stores `value` at `key` as a write protected by the lock `guard` holds:
    /// like [`store`](Storage::store), but refused with
    /// [`StorageError::LockLost`] when the guard's lock was lost or taken
    /// over by a newer holder.
    ///
    /// This is **fencing**: a holder paused past its lease (a long GC pause,
    /// `SIGSTOP`, a VM migration) may not yet know that it lost the lock,
    /// so a backend that can MUST check, as part of the write itself, that no
    /// other client acquired the lock since `guard` did (the guard's
    /// [`fence`](LockGuard::fence) is the acquisition's number; a newer
    /// acquisition has a higher one). The default checks only
    /// [`LockGuard::ensure_held`], which catches a loss the keepalive has
    /// already noticed; backends override it with a check the write cannot
    /// race.
    ///
    /// What each backend of this crate guarantees:
    /// - [`MemoryStorage`](crate::MemoryStorage): exact; the check and the
    ///   write happen under one mutex.
    /// - [`FileStorage`](crate::FileStorage): the check runs just before the
    ///   rename that makes the value visible; a file system has no
    ///   compare-and-rename, so a holder paused between the two (a window of
    ///   microseconds) can still overwrite a newer holder's value. See
    ///   [its docs](crate::FileStorage#fencing).
    /// - `RedisStorage` (feature `redis`): atomic; a Lua script compares the
    ///   fence and writes in one step on the server.
    async fn store_fenced(
        &self,
        guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        guard.ensure_held()?;
        self.store(key, value).await
    }

    /// Deletes `key` (and everything below it) as a write protected by the
    /// lock `guard` holds: like [`delete`](Storage::delete), but refused with
    /// [`StorageError::LockLost`] when the guard's lock was lost or taken over
    /// by a newer holder, with the same fencing as
    /// [`store_fenced`](Storage::store_fenced). The default checks only
    /// [`LockGuard::ensure_held`].
    async fn delete_fenced(&self, guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        guard.ensure_held()?;
        self.delete(key).await
    }

    /// Removes temporary values a crashed write left behind (partial files
    /// that may hold key material) that are older than `older_than`, and
    /// says what it removed and what it skipped (see [`TemporariesSweep`]).
    /// A sweep may be bounded: what it did not reach, a later sweep does.
    /// Backends whose writes leave no temporaries return an empty sweep (the
    /// default).
    async fn remove_stale_temporaries(
        &self,
        _older_than: std::time::Duration,
    ) -> Result<TemporariesSweep, StorageError> {
        Ok(TemporariesSweep::default())
    }

    /// Where `key` lives on the local file system, for backends that keep
    /// files (used to tell people where to find, e.g., the local CA's root).
    fn local_path(&self, _key: &str) -> Option<std::path::PathBuf> {
        None
    }
}
