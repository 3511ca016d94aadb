//! An in-memory [`Storage`] backend, for tests and single-process use.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::{KeyInfo, LockGuard, LockLoss, Storage, StorageError, validate_key};

/// How long [`MemoryStorage::lock`] waits for a lock held by another task.
pub(crate) const LOCK_WAIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// A [`Storage`] that keeps everything in memory.
///
/// Clones share the same values and the same locks, so a clone handed to another
/// task or component sees everything this one stores and is excluded by its
/// locks. Nothing survives the process: use it for tests or for a single
/// process that does not need to keep certificates across restarts.
///
/// # Locks
///
/// [`lock`](Storage::lock) is real mutual exclusion among all clones: a second
/// `lock` of the same name waits (without polling, for at most 10 minutes)
/// until the holder releases or drops its [`LockGuard`]. In-memory locks need
/// no expiry and are never lost: the lock table lives in the same process as
/// every holder, and a guard dropped by a panicking or cancelled task
/// releases its lock.
///
/// Each acquisition gets a [fence](LockGuard::fence) (a number from one
/// counter, higher for every later acquisition), and
/// [`store_fenced`](Storage::store_fenced) checks that the guard's
/// acquisition still holds the lock under the same mutex as the write: the
/// check is exact.
///
/// # Keys
///
/// Keys are validated with [`validate_key`]. As in a file system, a key cannot
/// hold a value and have keys below it at the same time: storing `a/b` when
/// `a` holds a value (or `a` when `a/b` exists) is refused with
/// [`StorageError::InvalidKey`].
#[derive(Clone)]
pub struct MemoryStorage {
    inner: Arc<Inner>,
    /// How long `lock` waits for a held lock (per clone).
    lock_wait_timeout: std::time::Duration,
}

/// Counts only: values may be private keys, which never go to `Debug`.
impl std::fmt::Debug for MemoryStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One mutex at a time: `store_fenced` takes `locks` then `values`, so
        // holding both here (in the other order) could deadlock.
        let values = self.values().len();
        let locks_held = guard(&self.inner.locks).held.len();
        f.debug_struct("MemoryStorage")
            .field("values", &values)
            .field("locks_held", &locks_held)
            .field("lock_wait_timeout", &self.lock_wait_timeout)
            .finish()
    }
}

impl Default for MemoryStorage {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            lock_wait_timeout: LOCK_WAIT_TIMEOUT,
        }
    }
}

/// Values by key, with the time they were stored.
type Values = BTreeMap<String, (Vec<u8>, SystemTime)>;

#[derive(Debug, Default)]
struct Inner {
    /// Values by key, with the time they were stored.
    values: Mutex<Values>,
    /// The locks currently held. Taken before `values` when both are needed.
    locks: Mutex<Locks>,
    /// Woken whenever a lock is released.
    released: Notify,
}

/// The lock table.
#[derive(Debug, Default)]
struct Locks {
    /// The held locks by name.
    held: HashMap<String, Held>,
    /// The last fence given out (one counter for every lock name, so each
    /// name's fences increase).
    last_fence: u64,
}

/// One held lock.
#[derive(Debug)]
struct Held {
    fence: u64,
    #[cfg_attr(not(any(test, feature = "conformance")), allow(dead_code))]
    loss: LockLoss,
}

/// Locks a std mutex, ignoring poisoning: the data it guards stays consistent
/// because no operation here can panic half-way through an update.
fn guard<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `prefix` followed by `/`: every key strictly below `prefix` starts with it.
fn dir_prefix(prefix: &str) -> String {
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// The keys of `map` that start with `start`, in order.
fn keys_below<'a>(map: &'a Values, start: &'a str) -> impl Iterator<Item = &'a String> + 'a {
    map.range::<str, _>((Bound::Included(start), Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(move |k| k.starts_with(start))
}

fn check_lock_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() {
        return Err(StorageError::InvalidKey {
            key: String::new(),
            reason: "empty lock name",
        });
    }
    Ok(())
}

/// Stores `value` at `key` in `values` (the key already validated).
fn store_in(values: &mut Values, key: &str, value: &[u8]) -> Result<(), StorageError> {
    // A key cannot be both a value and a "directory", as in a file system.
    let mut end = 0;
    while let Some(pos) = key[end..].find('/') {
        end += pos;
        if values.contains_key(&key[..end]) {
            return Err(StorageError::InvalidKey {
                key: key.to_owned(),
                reason: "a parent of the key holds a value",
            });
        }
        end += 1;
    }
    let below = dir_prefix(key);
    if keys_below(values, &below).next().is_some() {
        return Err(StorageError::InvalidKey {
            key: key.to_owned(),
            reason: "the key has keys below it",
        });
    }
    values.insert(key.to_owned(), (value.to_vec(), SystemTime::now()));
    tracing::debug!(key, len = value.len(), "memory storage: stored");
    Ok(())
}

/// Deletes `key` and everything below it from `values` (the key already validated).
fn delete_in(values: &mut Values, key: &str) -> Result<(), StorageError> {
    let below = dir_prefix(key);
    let doomed: Vec<String> = keys_below(values, &below).cloned().collect();
    let had_value = values.remove(key).is_some();
    if !had_value && doomed.is_empty() {
        return Err(StorageError::NotFound(key.to_owned()));
    }
    for k in &doomed {
        values.remove(k);
    }
    tracing::debug!(
        key,
        removed = doomed.len() + usize::from(had_value),
        "memory storage: deleted"
    );
    Ok(())
}

impl MemoryStorage {
    /// Creates an empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    fn values(&self) -> MutexGuard<'_, Values> {
        guard(&self.inner.values)
    }

    /// The lock table, once it is checked that `lock_guard`'s acquisition
    /// still holds its lock: the caller writes while holding it (taken before
    /// `values`, as everywhere).
    fn check_fence(
        &self,
        lock_guard: &LockGuard,
        key: &str,
    ) -> Result<MutexGuard<'_, Locks>, StorageError> {
        let locks = guard(&self.inner.locks);
        let holds = lock_guard.fence().is_some_and(|fence| {
            locks
                .held
                .get(lock_guard.name())
                .is_some_and(|held| held.fence == fence)
        });
        if !holds {
            tracing::debug!(
                lock = lock_guard.name(),
                key,
                "memory storage: fenced write refused"
            );
            return Err(StorageError::LockLost(lock_guard.name().to_owned()));
        }
        Ok(locks)
    }

    /// This storage (same values and locks) with `lock` waiting at most
    /// `timeout` for a held lock.
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) fn with_lock_wait_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.lock_wait_timeout = timeout;
        self
    }

    /// Ends lock `name`'s hold as an expired lease would: the holder's guard
    /// reports the loss and another client may take the lock at once.
    #[cfg(any(test, feature = "conformance"))]
    pub(crate) fn expire_lock(&self, name: &str) {
        if let Some(held) = guard(&self.inner.locks).held.remove(name) {
            held.loss.report();
        }
        self.inner.released.notify_waiters();
    }
}

#[async_trait]
impl Storage for MemoryStorage {
    async fn store(&self, key: &str, value: &[u8]) -> Result<(), StorageError> {
        validate_key(key)?;
        store_in(&mut self.values(), key, value)
    }

    /// Stores `value` at `key` if `guard`'s acquisition still holds its lock,
    /// checked under the lock table's mutex, held through the write.
    async fn store_fenced(
        &self,
        lock_guard: &LockGuard,
        key: &str,
        value: &[u8],
    ) -> Result<(), StorageError> {
        validate_key(key)?;
        let _locks = self.check_fence(lock_guard, key)?;
        store_in(&mut self.values(), key, value)
    }

    /// Deletes `key` if `guard`'s acquisition still holds its lock, checked
    /// under the lock table's mutex, held through the delete.
    async fn delete_fenced(&self, lock_guard: &LockGuard, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        let _locks = self.check_fence(lock_guard, key)?;
        delete_in(&mut self.values(), key)
    }

    async fn load(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        validate_key(key)?;
        self.values()
            .get(key)
            .map(|(value, _)| value.clone())
            .ok_or_else(|| StorageError::NotFound(key.to_owned()))
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        validate_key(key)?;
        delete_in(&mut self.values(), key)
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        validate_key(key)?;
        let values = self.values();
        let below = dir_prefix(key);
        Ok(values.contains_key(key) || keys_below(&values, &below).next().is_some())
    }

    /// Lists the keys below `prefix`; an empty `prefix` lists from the top.
    ///
    /// Returns [`StorageError::NotFound`] when `prefix` is neither a value nor
    /// has keys below it, and an empty list when it holds a value.
    async fn list(&self, prefix: &str, recursive: bool) -> Result<Vec<String>, StorageError> {
        if !prefix.is_empty() {
            validate_key(prefix)?;
        }
        let values = self.values();
        let below = dir_prefix(prefix);
        let mut found = keys_below(&values, &below).peekable();
        if found.peek().is_none() {
            if prefix.is_empty() || values.contains_key(prefix) {
                return Ok(Vec::new());
            }
            return Err(StorageError::NotFound(prefix.to_owned()));
        }
        if recursive {
            // BTreeMap iteration is already sorted.
            return Ok(found.cloned().collect());
        }
        let children: BTreeSet<String> = found
            .map(|k| {
                let rest = &k[below.len()..];
                let child = rest.split('/').next().unwrap_or(rest);
                format!("{below}{child}")
            })
            .collect();
        Ok(children.into_iter().collect())
    }

    async fn stat(&self, key: &str) -> Result<KeyInfo, StorageError> {
        validate_key(key)?;
        let values = self.values();
        if let Some((value, modified)) = values.get(key) {
            return Ok(KeyInfo::new(
                key.to_owned(),
                Some(*modified),
                value.len() as u64,
                true,
            ));
        }
        let below = dir_prefix(key);
        if keys_below(&values, &below).next().is_some() {
            return Ok(KeyInfo::new(key.to_owned(), None, 0, false));
        }
        Err(StorageError::NotFound(key.to_owned()))
    }

    /// Acquires the lock `name`, waiting until no clone of this storage holds
    /// it, for at most 10 minutes ([`StorageError::LockTimeout`]).
    async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        check_lock_name(name)?;
        let loss = LockLoss::new();
        let try_take = || {
            let mut locks = guard(&self.inner.locks);
            if locks.held.contains_key(name) {
                return None;
            }
            locks.last_fence += 1;
            let fence = locks.last_fence;
            locks.held.insert(
                name.to_owned(),
                Held {
                    fence,
                    loss: loss.clone(),
                },
            );
            Some(fence)
        };
        // Uncontended: taken at once, with no timer (so a runtime without
        // tokio's time driver can use it).
        let fence = match try_take() {
            Some(fence) => fence,
            None => {
                let wait = async {
                    loop {
                        // Register for the wake-up before checking, so that a
                        // release between the check and the await is not missed.
                        let released = self.inner.released.notified();
                        tokio::pin!(released);
                        released.as_mut().enable();
                        if let Some(fence) = try_take() {
                            return fence;
                        }
                        tracing::debug!(lock = name, "memory storage: waiting for lock");
                        released.await;
                    }
                };
                tokio::time::timeout(self.lock_wait_timeout, wait)
                    .await
                    .map_err(|_| StorageError::LockTimeout(name.to_owned()))?
            }
        };
        tracing::debug!(lock = name, fence, "memory storage: lock acquired");
        let inner = self.inner.clone();
        let lock_name = name.to_owned();
        Ok(LockGuard::new(name, &loss, move || {
            {
                let mut locks = guard(&inner.locks);
                // Only this acquisition's hold: an expired one may have been
                // taken by another holder since.
                if locks.held.get(&lock_name).is_some_and(|h| h.fence == fence) {
                    locks.held.remove(&lock_name);
                }
            }
            tracing::debug!(lock = %lock_name, "memory storage: lock released");
            inner.released.notify_waiters();
            std::future::ready(Ok(()))
        })
        .with_fence(fence))
    }
}

#[cfg(test)]
mod tests {
    //! What only `MemoryStorage` does; the storage contract is checked by
    //! the conformance suite (`storage::conformance`, `MemoryBackend`).
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// `Debug` shows counts, never values (they may be private keys).
    #[tokio::test]
    async fn debug_hides_values() {
        let s = MemoryStorage::new();
        s.store("k", b"PRIVATE KEY").await.unwrap();
        let shown = format!("{s:?}");
        assert!(shown.contains("values: 1"), "{shown}");
        assert!(
            !shown.contains("PRIVATE") && !shown.contains("80, 82"),
            "{shown}"
        );
    }

    /// `Debug` and a fenced write running at once never deadlock (`Debug`
    /// once held `values` while waiting for `locks`, the reverse of
    /// `store_fenced`'s order). Threads hammer both; a deadlock shows as the
    /// work not finishing within the bound.
    #[test]
    fn debug_and_fenced_writes_do_not_deadlock() {
        let s = MemoryStorage::new();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let writer = {
            let (s, done_tx) = (s.clone(), done_tx.clone());
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let lock = s.lock("l").await.unwrap();
                    for i in 0..20_000u32 {
                        s.store_fenced(&lock, "k", &i.to_be_bytes()).await.unwrap();
                    }
                    lock.release().await.unwrap();
                });
                let _ = done_tx.send(());
            })
        };
        let reader = std::thread::spawn(move || {
            for _ in 0..20_000 {
                let _ = format!("{s:?}");
            }
            let _ = done_tx.send(());
        });
        for _ in 0..2 {
            done_rx
                .recv_timeout(std::time::Duration::from_secs(120))
                .expect("Debug and store_fenced deadlocked");
        }
        writer.join().unwrap();
        reader.join().unwrap();
    }

    /// A fenced delete by the holder removes the value (and a directory);
    /// one by a guard whose lock was taken over is refused and removes nothing.
    #[tokio::test]
    async fn fenced_delete() {
        let s = MemoryStorage::new();
        let old = s.lock("l").await.unwrap();
        s.store_fenced(&old, "d/a", b"1").await.unwrap();
        s.expire_lock("l");
        let new = s.lock("l").await.unwrap();
        s.store_fenced(&new, "d/b", b"2").await.unwrap();
        assert!(matches!(
            s.delete_fenced(&old, "d").await,
            Err(StorageError::LockLost(_))
        ));
        assert!(matches!(
            s.delete_fenced(&old, "d/a").await,
            Err(StorageError::LockLost(_))
        ));
        assert_eq!(s.load("d/b").await.unwrap(), b"2");
        s.delete_fenced(&new, "d/a").await.unwrap();
        assert!(s.load("d/a").await.unwrap_err().is_not_found());
        s.delete_fenced(&new, "d").await.unwrap();
        assert!(!s.exists("d").await.unwrap());
        new.release().await.unwrap();
    }

    /// Clones share values; a new storage is separate.
    #[tokio::test]
    async fn new_storages_are_separate() {
        let s = MemoryStorage::new();
        s.store("k", b"v").await.unwrap();
        assert_eq!(s.clone().load("k").await.unwrap(), b"v");
        assert!(
            MemoryStorage::new()
                .load("k")
                .await
                .unwrap_err()
                .is_not_found()
        );
    }

    /// As in a file system, a key cannot both hold a value and have keys below it.
    #[tokio::test]
    async fn value_and_directory_conflict() {
        let s = MemoryStorage::new();
        s.store("a", b"x").await.unwrap();
        assert!(matches!(
            s.store("a/b", b"x").await,
            Err(StorageError::InvalidKey { .. })
        ));
        s.store("c/d", b"x").await.unwrap();
        assert!(matches!(
            s.store("c", b"x").await,
            Err(StorageError::InvalidKey { .. })
        ));
        assert_eq!(
            s.list("", false).await.unwrap(),
            vec!["a".to_owned(), "c".to_owned()]
        );
    }

    /// An uncontended lock needs no timer (a runtime without tokio's time
    /// driver can use it), and a released lock's waiter is woken without polling.
    #[test]
    fn uncontended_lock_needs_no_timer() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(async {
            let s = MemoryStorage::new();
            let guard = s.lock("l").await.unwrap();
            assert!(guard.fence().is_some());
            guard.release().await.unwrap();
            s.lock("l").await.unwrap().release().await.unwrap();
        });
    }
}
