//! File locks: exclusive creation of `<root>/locks/<name>.lock` holding the
//! acquisition's owner token and fence (from the one counter
//! `<root>/locks/.fences`), a keepalive that refreshes
//! the lock file's modification time through a checked handle, stale-lock
//! breaking, and reporting a lock lost under its holder.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::atomic::{create_private_dirs, create_private_file, unique_suffix, write_atomic};
use super::{FileStorage, blocking, io_fail};
use crate::storage::{LockGuard, LockLoss, StorageError};

pub(crate) const DEFAULT_STALE_AFTER: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(250);
pub(crate) const MAX_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_WAIT_TIMEOUT: Duration = Duration::from_secs(600);
/// The smallest interval accepted for polling and keepalive, so that a zero
/// does not turn into a busy loop.
pub(super) const MIN_INTERVAL: Duration = Duration::from_millis(1);
/// The folder (relative to the root) holding lock files.
pub(super) const LOCKS_DIR: &str = "locks";
/// Lock names longer than this are shortened with a hash.
pub(crate) const MAX_LOCK_NAME: usize = 200;
/// The most of a lock file read (they hold a short JSON object).
pub(crate) const MAX_LOCK_FILE: u64 = 4096;

/// Lock timings of a [`FileStorage`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LockConfig {
    pub(super) stale_after: Duration,
    pub(super) keepalive: Duration,
    pub(super) poll_interval: Duration,
    pub(super) wait_timeout: Option<Duration>,
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

/// The content of a lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LockMeta {
    /// When the lock was taken, Unix seconds (informative only: freshness is
    /// the file's modification time).
    pub(super) created: f64,
    /// The holder's process id (informative only).
    pub(super) pid: u32,
    /// A random token identifying the holder.
    #[serde(default)]
    pub(super) owner: String,
    /// The acquisition's fence (0: none, a file written by another tool).
    #[serde(default)]
    pub(super) fence: u64,
}

/// The fence counter of a root, next to the lock files: one small file for
/// every lock name (a dot-file: never listed).
pub(super) const FENCE_COUNTER: &str = ".fences";

/// How often [`open_lock`] tries again a lock file that is missing, and how
/// long it pauses in between: a waiting client that breaks a lock it found
/// stale renames it aside for a moment, and puts it back if it was refreshed
/// meanwhile, so one missing look is not proof of a loss.
const MISSING_RETRIES: u32 = 3;
const MISSING_PAUSE: Duration = Duration::from_millis(2);

/// Microseconds since the Unix epoch (0 before it).
fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// A random token identifying one lock acquisition, unique across machines.
pub(super) fn owner_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 16];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => bytes.iter().map(|b| format!("{b:02x}")).collect(),
        Err(_) => unique_suffix(),
    }
}

/// Turns a lock name into a lock file name (without the `.lock` extension).
pub(crate) fn lock_file_stem(name: &str) -> Result<String, StorageError> {
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
pub(super) struct LockSnapshot {
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
pub(super) enum Attempt {
    /// The lock file is ours, with this fence.
    Acquired(u64),
    /// Someone else holds the lock; this is what its file looked like.
    Held(LockSnapshot),
    /// The lock file vanished meanwhile: try again at once.
    Retry,
}

/// Reads at most [`MAX_LOCK_FILE`] bytes of `file`.
pub(super) fn read_bounded(file: &mut fs::File) -> io::Result<Vec<u8>> {
    let mut content = Vec::new();
    file.take(MAX_LOCK_FILE).read_to_end(&mut content)?;
    Ok(content)
}

/// One attempt to create the lock file at `path`; if it exists, what it holds.
pub(super) fn try_acquire(path: &Path, owner: &str) -> io::Result<Attempt> {
    if let Some(dir) = path.parent() {
        create_private_dirs(dir)?;
    }
    match create_private_file(path) {
        Ok(mut file) => {
            // The fence is given once the file is ours, and written through
            // the handle that created it: if a client broke the lock as stale
            // meanwhile (this attempt stalled), the write lands in the file it
            // moved aside, never in the new holder's lock file.
            let written = next_fence(path).and_then(|fence| {
                let meta = LockMeta {
                    created: unix_now(),
                    pid: std::process::id(),
                    owner: owner.to_owned(),
                    fence,
                };
                let json = serde_json::to_vec(&meta).map_err(io::Error::other)?;
                file.write_all(&json)?;
                file.sync_all()?;
                Ok(fence)
            });
            drop(file);
            return match written {
                Ok(fence) => Ok(Attempt::Acquired(fence)),
                Err(e) => {
                    let _ = fs::remove_file(path);
                    Err(e)
                }
            };
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
pub(super) fn snapshot(path: &Path) -> io::Result<Option<LockSnapshot>> {
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
pub(super) fn break_stale(path: &Path, seen: &LockSnapshot) -> io::Result<()> {
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

/// The next fence of the root whose lock file is at `lock`: above the last
/// one given (the counter file [`FENCE_COUNTER`] next to it) and at least the
/// current time in microseconds. The counter is read and written without a
/// lock of its own, so two acquisitions of *different* names may bump it at
/// once; the time keeps fences of one name increasing all the same (the
/// acquisitions of one name are ordered by the lock file), unless the clock
/// steps back while a bump is lost.
fn next_fence(lock: &Path) -> io::Result<u64> {
    let counter = lock.with_file_name(FENCE_COUNTER);
    let last = match fs::File::open(&counter) {
        Ok(mut file) => {
            let content = read_bounded(&mut file)?;
            std::str::from_utf8(&content)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(e),
    };
    let fence = last.saturating_add(1).max(unix_micros());
    write_atomic(&counter, fence.to_string().as_bytes())?;
    Ok(fence)
}

/// Opens the lock file at `path` with `options`; `None` when it is missing
/// (looked at [`MISSING_RETRIES`] times, see there).
fn open_lock(path: &Path, options: &fs::OpenOptions) -> io::Result<Option<fs::File>> {
    for attempt in 0..=MISSING_RETRIES {
        match options.open(path) {
            Ok(file) => return Ok(Some(file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if attempt < MISSING_RETRIES {
                    std::thread::sleep(MISSING_PAUSE);
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Whether the acquisition with `fence` still holds the lock whose file is
/// at `lock`: the lock file (one file, read once) names that fence.
pub(super) fn holds(lock: &Path, fence: u64) -> io::Result<bool> {
    if fence == 0 {
        return Ok(false);
    }
    let Some(mut file) = open_lock(lock, fs::OpenOptions::new().read(true))? else {
        return Ok(false);
    };
    let content = read_bounded(&mut file)?;
    Ok(serde_json::from_slice::<LockMeta>(&content).is_ok_and(|meta| meta.fence == fence))
}

/// Whether the lock file named `owner`'s token, once opened.
pub(super) fn is_owned_by(content: &[u8], owner: &str) -> bool {
    serde_json::from_slice::<LockMeta>(content).is_ok_and(|meta| meta.owner == owner)
}

/// Touches the modification time of the lock file at `path` if it still
/// belongs to `owner`, through the same handle its content was checked on, so
/// a file another client put in its place is never touched. Returns whether
/// the lock is still `owner`'s.
pub(super) fn refresh_lock(path: &Path, owner: &str) -> io::Result<bool> {
    let Some(mut file) = open_lock(path, fs::OpenOptions::new().read(true).write(true))? else {
        return Ok(false);
    };
    if !is_owned_by(&read_bounded(&mut file)?, owner) {
        return Ok(false);
    }
    file.set_modified(SystemTime::now())?;
    Ok(true)
}

/// Removes the lock file at `path` if it still belongs to `owner`.
pub(super) fn release_lock(path: &Path, owner: &str) -> io::Result<()> {
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
pub(super) struct PendingAttempt {
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
            if let Ok(Ok(Attempt::Acquired(_))) = task.await {
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
pub(super) struct Keepalive {
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

impl FileStorage {
    /// The lock file of `name`, and its file name.
    pub(super) fn lock_path(&self, name: &str) -> Result<(PathBuf, String), StorageError> {
        let file = format!("{}.lock", lock_file_stem(name)?);
        Ok((self.inner.root.join(LOCKS_DIR).join(&file), file))
    }

    pub(super) async fn acquire_lock(&self, name: &str) -> Result<LockGuard, StorageError> {
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
        let fence = loop {
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
                Attempt::Acquired(fence) => break fence,
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
        };

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
        tracing::debug!(lock = name, fence, "file storage: lock acquired");
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
        })
        .with_fence(fence))
    }

    /// Makes lock `name` look abandoned, as if its holder had stopped
    /// refreshing it long ago: its lock file's modification time is set to
    /// 1970, so the next client that wants it breaks it at once.
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) async fn expire_lock_file(&self, name: &str) -> Result<(), StorageError> {
        let (path, _file) = self.lock_path(name)?;
        let lock_name = name.to_owned();
        blocking(name, move || {
            let file = match fs::OpenOptions::new().write(true).open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(io_fail(&lock_name, e)),
            };
            file.set_modified(UNIX_EPOCH + Duration::from_secs(1))
                .map_err(|e| io_fail(&lock_name, e))
        })
        .await
    }
}
