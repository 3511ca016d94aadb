//! Locks on Redis: acquisition with a fence, the keepalive that extends the
//! lease and reports a loss, release, and cancel safety.

use std::time::Duration;

use ring::rand::{SecureRandom, SystemRandom};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{MAX_LOCK_NAME, RedisStorage};
use crate::storage::{LockGuard, LockLoss, StorageError};

pub(super) use crate::storage::redis_defaults::{
    DEFAULT_LEASE, DEFAULT_POLL, DEFAULT_WAIT_TIMEOUT,
};

/// The lock timings of a [`RedisStorage`].
#[derive(Debug, Clone, Copy)]
pub(super) struct LockTimings {
    pub(super) lease: Duration,
    pub(super) keepalive: Duration,
    pub(super) poll: Duration,
    pub(super) wait_timeout: Duration,
}

impl LockTimings {
    /// The lease in whole milliseconds, at least 1 (what `PX` takes).
    fn lease_ms(&self) -> u64 {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

/// 16 random bytes in hex: the token of one acquisition, or the id of one
/// write or delete.
pub(super) fn token() -> Result<String, StorageError> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StorageError::Backend("system random number generator failed".into()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `base` scaled by a random factor in [0.5, 1.5).
fn jittered(base: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let factor = match SystemRandom::new().fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 256.0,
        Err(_) => 1.0,
    };
    base.mul_f64(factor)
}

fn check_name(name: &str) -> Result<(), StorageError> {
    let invalid = |reason| StorageError::InvalidKey {
        key: name.chars().take(300).collect(),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("empty lock name"));
    }
    if name.len() > MAX_LOCK_NAME {
        return Err(invalid("lock name longer than 1024 bytes"));
    }
    Ok(())
}

/// An acquisition attempt in flight: dropped before [`disarm`](Self::disarm)
/// (the `lock` future was cancelled), it releases in the background whatever
/// the attempt may have taken, so a cancelled `lock` never leaves a lock
/// behind. The release is sent twice: at once, and again after the response
/// timeout. Commands on one connection run in order, but the first release
/// may go out on a new connection (the attempt's connection was dropped) and
/// reach the server before the abandoned attempt; by the second, the attempt
/// has arrived or never will. (A release finds nothing of its own to delete
/// when the attempt took nothing; the token is this `lock` call's alone.)
struct PendingAttempt {
    storage: Option<RedisStorage>,
    lock_key: String,
    token: String,
}

impl PendingAttempt {
    fn disarm(mut self) {
        self.storage = None;
    }
}

impl Drop for PendingAttempt {
    fn drop(&mut self) {
        let Some(storage) = self.storage.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (lock_key, token) = (
            std::mem::take(&mut self.lock_key),
            std::mem::take(&mut self.token),
        );
        runtime.spawn(async move {
            let first = storage.release_key(&lock_key, &token).await;
            tokio::time::sleep(storage.inner.conn.response_timeout()).await;
            let second = storage.release_key(&lock_key, &token).await;
            tracing::debug!(
                released = matches!(first, Ok(true)) || matches!(second, Ok(true)),
                ok = first.is_ok() && second.is_ok(),
                "redis storage: lock attempt of a cancelled lock() released"
            );
            if matches!(second, Ok(true)) {
                storage.inner.released.notify_waiters();
            }
        });
    }
}

impl RedisStorage {
    /// Deletes `lock_key` if it still holds `token`; whether it did.
    async fn release_key(&self, lock_key: &str, token: &str) -> Result<bool, StorageError> {
        let released: i64 = self
            .inner
            .conn
            .run(|mut c| {
                let mut invocation = self.inner.scripts.release.prepare_invoke();
                invocation.key(lock_key).arg(token);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(released == 1)
    }

    /// Extends `lock_key` if it still holds `token`; whether it did.
    async fn extend_key(&self, lock_key: &str, token: &str) -> Result<bool, StorageError> {
        let extended: i64 = self
            .inner
            .conn
            .run(|mut c| {
                let mut invocation = self.inner.scripts.extend.prepare_invoke();
                invocation
                    .key(lock_key)
                    .arg(token)
                    .arg(self.inner.timings.lease_ms());
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        Ok(extended == 1)
    }

    /// One attempt to take `lock_key`: the new fence, or `None` when held.
    async fn try_acquire(
        &self,
        lock_key: &str,
        fence_key: &str,
        token: &str,
    ) -> Result<Option<u64>, StorageError> {
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let pending = PendingAttempt {
            storage: Some(self.clone()),
            lock_key: lock_key.to_owned(),
            token: token.to_owned(),
        };
        let fence: u64 = self
            .inner
            .conn
            .run(|mut c| {
                let mut invocation = self.inner.scripts.acquire.prepare_invoke();
                invocation
                    .key(lock_key)
                    .key(fence_key)
                    .arg(token)
                    .arg(self.inner.timings.lease_ms())
                    .arg(now_micros);
                async move { invocation.invoke_async(&mut c).await }
            })
            .await?;
        pending.disarm();
        Ok((fence > 0).then_some(fence))
    }

    pub(super) async fn acquire(&self, name: &str) -> Result<LockGuard, StorageError> {
        check_name(name)?;
        let keys = &self.inner.keys;
        let (lock_key, fence_key) = (keys.lock(name), keys.fence());
        let timings = self.inner.timings;
        let token = token()?;
        let started = Instant::now();
        // A timeout too large to represent is as good as none.
        let deadline = started.checked_add(timings.wait_timeout);
        let fence = loop {
            // Register before trying, so that a local release in between wakes us.
            let released = self.inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let sent = Instant::now();
            if let Some(fence) = self.try_acquire(&lock_key, &fence_key, &token).await? {
                break (fence, sent);
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(deadline) if now >= deadline => {
                    tracing::debug!(lock = name, "redis storage: timed out waiting for lock");
                    return Err(StorageError::LockTimeout(name.to_owned()));
                }
                Some(deadline) => jittered(timings.poll).min(deadline - now),
                None => jittered(timings.poll),
            };
            tracing::trace!(
                lock = name,
                ?wait,
                "redis storage: lock held elsewhere, waiting"
            );
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut released => {}
            }
        };
        let (fence, acquired_at) = fence;
        // Keyed by the acquisition, not the fence: a fence may repeat after
        // the server lost its data, and must not find another guard's token.
        let acquisition = crate::storage::lock::next_acquisition();
        self.held().insert(acquisition, token.clone());

        let loss = LockLoss::new();
        let (stop, stop_rx) = oneshot::channel();
        let keepalive = tokio::spawn(self.clone().keepalive(
            name.to_owned(),
            token.clone(),
            acquired_at,
            loss.clone(),
            stop_rx,
        ));
        tracing::debug!(lock = name, fence, "redis storage: lock acquired");
        let storage = self.clone();
        let lock_name = name.to_owned();
        Ok(LockGuard::new(name, &loss, move || async move {
            let _ = stop.send(());
            // Wait for an extension in progress, so none follows the release.
            let _ = keepalive.await;
            storage.held().remove(&acquisition);
            let released = storage
                .release_key(&storage.inner.keys.lock(&lock_name), &token)
                .await;
            storage.inner.released.notify_waiters();
            match released? {
                true => tracing::debug!(lock = %lock_name, "redis storage: lock released"),
                false => tracing::warn!(lock = %lock_name,
                    "redis storage: lock had expired or been taken over when released"),
            }
            Ok(())
        })
        .with_fence(fence)
        .with_acquisition(acquisition))
    }

    /// Extends the lock every keepalive interval until told to stop (or the
    /// sender is dropped). Reports the lock lost, and ends, when an extension
    /// finds the token gone, or when no extension succeeded for a whole lease
    /// (counted from when the last successful one was sent, which is no later
    /// than when Redis applied it). Errors are otherwise retried.
    async fn keepalive(
        self,
        name: String,
        token: String,
        acquired_at: Instant,
        loss: LockLoss,
        mut stop: oneshot::Receiver<()>,
    ) {
        let timings = self.inner.timings;
        let lock_key = self.inner.keys.lock(&name);
        let mut last_ok = acquired_at;
        loop {
            let expires = last_ok + timings.lease;
            let next = (Instant::now() + timings.keepalive).min(expires);
            tokio::select! {
                biased;
                _ = &mut stop => return,
                () = tokio::time::sleep_until(next) => {}
            }
            let sent = Instant::now();
            if sent >= expires {
                tracing::warn!(lock = %name, lease = ?timings.lease,
                    "redis storage: could not extend the lock for a whole lease; it counts as lost");
                loss.report();
                return;
            }
            let outcome =
                tokio::time::timeout(expires - sent, self.extend_key(&lock_key, &token)).await;
            match outcome {
                Ok(Ok(true)) => {
                    last_ok = sent;
                    tracing::trace!(lock = %name, "redis storage: lock extended");
                }
                Ok(Ok(false)) => {
                    tracing::warn!(lock = %name,
                        "redis storage: held lock expired or was taken over by another client");
                    loss.report();
                    return;
                }
                Ok(Err(e)) => {
                    tracing::warn!(lock = %name, error = %crate::error::ErrorChain(&e),
                        "redis storage: could not extend the lock; retrying");
                }
                Err(_) => {
                    tracing::warn!(lock = %name, lease = ?timings.lease,
                        "redis storage: could not extend the lock for a whole lease; it counts as lost");
                    loss.report();
                    return;
                }
            }
        }
    }
}
