//! Storage locks as guards: released when dropped, and able to say when they
//! were lost.
//!
//! [`Storage::lock`](super::Storage::lock) returns a [`LockGuard`]. The holder
//! releases it with [`LockGuard::release`]; a guard dropped without that (its
//! future was cancelled by a `timeout`, a `select!` or an aborted task, or it
//! panicked) releases the lock in the background, so a cancelled operation
//! never leaves a lock held.
//!
//! A backend that finds its holder's lock broken or taken over (a keepalive
//! that could not refresh in time, a lock file replaced by another client)
//! reports it through the [`LockLoss`] it gave the guard; the holder checks
//! [`LockGuard::ensure_held`] before every write the lock protects, and can
//! await [`LockGuard::lost`] to stop work early.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use super::{Storage, StorageError};

/// Takes `name`'s lock on `storage` (see [`Storage::lock`]), counted in the
/// [`LOCK_WAITS`](crate::metrics::LOCK_WAITS) gauge while it waits (a drop
/// guard: a cancelled wait takes its count back).
pub(crate) async fn acquire(storage: &dyn Storage, name: &str) -> Result<LockGuard, StorageError> {
    let _waiting = crate::metrics::lock_wait_started();
    storage.lock(name).await
}

/// The release action of a lock, run once.
type Release = Box<
    dyn FnOnce() -> Pin<Box<dyn Future<Output = Result<(), StorageError>> + Send>> + Send + Sync,
>;

/// The backend's side of a held lock: how it tells the holder that the lock
/// was lost. Cheap to clone; every clone reports to the same guard.
#[derive(Clone)]
pub struct LockLoss {
    tx: Arc<watch::Sender<bool>>,
}

impl fmt::Debug for LockLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockLoss")
            .field("lost", &self.is_reported())
            .finish()
    }
}

impl Default for LockLoss {
    fn default() -> Self {
        Self::new()
    }
}

impl LockLoss {
    /// A new, not yet reported, loss signal.
    pub fn new() -> Self {
        let (tx, _rx) = watch::channel(false);
        Self { tx: Arc::new(tx) }
    }

    /// Tells the holder its lock is no longer exclusively its own.
    pub fn report(&self) {
        self.tx.send_replace(true);
    }

    /// Whether [`report`](Self::report) was called.
    pub fn is_reported(&self) -> bool {
        *self.tx.borrow()
    }
}

/// A number never given before in this process, identifying one acquisition.
pub(crate) fn next_acquisition() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A held storage lock.
///
/// # Invariants
/// - The release action runs at most once: by [`release`](Self::release), or
///   in the background when the guard is dropped (on the current tokio
///   runtime; with no runtime left, the backend's expiry frees the lock).
/// - Once [`is_lost`](Self::is_lost) is true it stays true.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    name: String,
    fence: Option<u64>,
    /// Unique to this acquisition within the process (fences may repeat
    /// after a backend lost its data; this never does).
    acquisition: u64,
    lost: watch::Receiver<bool>,
    release: Option<Release>,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("fence", &self.fence)
            .field("lost", &self.is_lost())
            .field("released", &self.release.is_none())
            .finish()
    }
}

impl LockGuard {
    /// A guard for the lock `name`: `loss` is how the backend reports a lost
    /// lock, `release` frees it (called once, also when the guard is dropped).
    pub fn new<F, Fut>(name: impl Into<String>, loss: &LockLoss, release: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), StorageError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            fence: None,
            acquisition: next_acquisition(),
            lost: loss.tx.subscribe(),
            release: Some(Box::new(move || Box::pin(release()))),
        }
    }

    /// Sets the fencing token of this acquisition: a number the backend
    /// gives each acquisition of the lock, higher for every later one, that
    /// [`Storage::store_fenced`](super::Storage::store_fenced) checks.
    pub fn with_fence(mut self, fence: u64) -> Self {
        self.fence = Some(fence);
        self
    }

    /// Sets the number identifying this acquisition within the process
    /// (from [`next_acquisition`]), for a backend that must know it before
    /// the guard exists (e.g. in its release action).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn with_acquisition(mut self, acquisition: u64) -> Self {
        self.acquisition = acquisition;
        self
    }

    /// The number identifying this acquisition within the process: never
    /// the same for two guards (unlike a fence, which a backend that lost
    /// its data may give again).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) fn acquisition(&self) -> u64 {
        self.acquisition
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The fencing token of this acquisition, when the backend gives one.
    pub fn fence(&self) -> Option<u64> {
        self.fence
    }

    /// Whether the backend reported the lock lost (broken as stale, taken over).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// `Ok` while the lock is held; [`StorageError::LockLost`] once it was lost.
    /// Call it before every write the lock protects.
    pub fn ensure_held(&self) -> Result<(), StorageError> {
        if self.is_lost() {
            Err(StorageError::LockLost(self.name.clone()))
        } else {
            Ok(())
        }
    }

    /// Resolves when the lock is lost (never, while it is held).
    pub async fn lost(&self) {
        let mut rx = self.lost.clone();
        // An error means the backend dropped its side without reporting a
        // loss: the lock can no longer be lost.
        if rx.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Releases the lock now and says whether that worked.
    ///
    /// Cancel safe: on a tokio runtime the release runs in a task of its own
    /// and this awaits it, so a `release` future dropped part-way (a
    /// `timeout`, a `select!`) leaves the release running to its end instead
    /// of leaving the lock held until it expires.
    pub async fn release(mut self) -> Result<(), StorageError> {
        let Some(release) = self.release.take() else {
            return Ok(());
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime.spawn(release()).await.map_err(|e| {
                StorageError::Backend(format!("lock release task failed: {e}").into())
            })?,
            Err(_) => release().await,
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        let Some(release) = self.release.take() else {
            return;
        };
        let name = std::mem::take(&mut self.name);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!(lock = %name, "lock guard dropped unreleased; releasing in the background");
                runtime.spawn(async move {
                    if let Err(e) = release().await {
                        tracing::warn!(lock = %name, error = %crate::error::ErrorChain(&e), "could not release a dropped lock");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(lock = %name, "lock guard dropped outside a runtime; the lock expires instead");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting_guard(count: &Arc<AtomicUsize>, loss: &LockLoss) -> LockGuard {
        let count = count.clone();
        LockGuard::new("l", loss, move || async move {
            count.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    #[tokio::test]
    async fn release_runs_once() {
        let count = Arc::new(AtomicUsize::new(0));
        let guard = counting_guard(&count, &LockLoss::new());
        guard.release().await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn drop_releases_in_the_background() {
        let count = Arc::new(AtomicUsize::new(0));
        drop(counting_guard(&count, &LockLoss::new()));
        for _ in 0..1000 {
            if count.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }

    /// A `release` cancelled part-way still completes (review 7): the
    /// release body runs in its own task.
    #[tokio::test]
    async fn cancelled_release_still_completes() {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let guard = LockGuard::new("l", &LockLoss::new(), move || async move {
            let _ = started_tx.send(());
            let _ = go_rx.await;
            let _ = done_tx.send(());
            Ok(())
        });
        let release = tokio::spawn(guard.release());
        // The release body is running; cancel the `release` future.
        started_rx.await.unwrap();
        release.abort();
        assert!(release.await.unwrap_err().is_cancelled());
        go_tx.send(()).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), done_rx)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn loss_is_seen_by_the_holder() {
        let loss = LockLoss::new();
        let guard = counting_guard(&Arc::new(AtomicUsize::new(0)), &loss);
        guard.ensure_held().unwrap();
        loss.report();
        assert!(guard.is_lost());
        assert!(matches!(guard.ensure_held(), Err(StorageError::LockLost(n)) if n == "l"));
        tokio::time::timeout(std::time::Duration::from_secs(30), guard.lost())
            .await
            .unwrap();
    }
}
