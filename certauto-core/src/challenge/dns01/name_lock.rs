//! Per-name async locks for providers whose API replaces whole record sets.
//!
//! A provider that adds a value by reading the record set and writing it back
//! with the value added (read-modify-write) loses one of two values written at
//! once to the same name, as a wildcard and its apex are. [`NameLocks`]
//! serialises those calls per name inside one provider (and its clones).
//!
//! # Invariants
//!
//! - Two holders of a guard for equal keys never exist at once (a
//!   `tokio::sync::Mutex` per key; waiters are served in order).
//! - An entry lives while some guard or waiter holds it: the last guard
//!   dropped removes it, and entries left by cancelled waiters are swept once
//!   the map holds more than [`SWEEP_ABOVE`] entries, so the map is bounded
//!   by the number of calls under way (plus at most [`SWEEP_ABOVE`]).
//! - Only this process is covered: another process (or another tool) writing
//!   the same record set at the same time can still race.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// Above this many entries, idle ones are swept when a lock is taken.
pub(crate) const SWEEP_ABOVE: usize = 64;

type Map<K> = HashMap<K, Arc<tokio::sync::Mutex<()>>>;

/// One async mutex per key, created on demand and removed when unused.
/// Clones share the same locks.
#[derive(Debug)]
pub(crate) struct NameLocks<K: Eq + Hash + Clone = String> {
    map: Arc<Mutex<Map<K>>>,
}

impl<K: Eq + Hash + Clone> Clone for NameLocks<K> {
    fn clone(&self) -> Self {
        Self {
            map: self.map.clone(),
        }
    }
}

impl<K: Eq + Hash + Clone> Default for NameLocks<K> {
    fn default() -> Self {
        Self {
            map: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn lock_map<K>(map: &Mutex<Map<K>>) -> MutexGuard<'_, Map<K>> {
    // The map is consistent after any panic (single inserts and removes).
    map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<K: Eq + Hash + Clone> NameLocks<K> {
    /// An empty set of locks.
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Waits until no other guard for `key` is held and returns one.
    pub(crate) async fn lock(&self, key: K) -> NameGuard<K> {
        let mutex = {
            let mut map = lock_map(&self.map);
            if map.len() > SWEEP_ABOVE {
                // Entries only the map holds: left by cancelled waiters.
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(key.clone()).or_default().clone()
        };
        let guard = mutex.lock_owned().await;
        NameGuard {
            guard: Some(guard),
            key,
            map: self.map.clone(),
        }
    }

    /// How many keys have an entry (held, waited for, or not yet swept).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock_map(&self.map).len()
    }
}

/// Holds the lock of one key; dropping it releases the lock and removes the
/// entry when nobody else holds or waits for it.
#[derive(Debug)]
pub(crate) struct NameGuard<K: Eq + Hash + Clone = String> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    map: Arc<Mutex<Map<K>>>,
}

impl<K: Eq + Hash + Clone> Drop for NameGuard<K> {
    fn drop(&mut self) {
        // Release first, so the strong count below counts only others.
        drop(self.guard.take());
        let mut map = lock_map(&self.map);
        if map
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn serialises_one_name_and_cleans_up() {
        let locks: NameLocks = NameLocks::new();
        let first = locks.lock("a".to_owned()).await;
        // Another name is free meanwhile.
        let other = locks.lock("b".to_owned()).await;
        drop(other);
        assert_eq!(locks.len(), 1);

        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _g = locks.lock("a".to_owned()).await;
            }
        });
        // The waiter cannot finish while `first` is held.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(first);
        waiter.await.unwrap();
        assert_eq!(locks.len(), 0);
    }

    #[tokio::test]
    async fn entries_of_cancelled_waiters_are_swept() {
        let locks: NameLocks<usize> = NameLocks::new();
        for key in 0..SWEEP_ABOVE {
            let held = locks.lock(key).await;
            let waiter = locks.lock(key);
            tokio::pin!(waiter);
            assert!(futures_util::FutureExt::now_or_never(waiter.as_mut()).is_none());
            // The holder leaves while the waiter still counts; then the
            // waiter is cancelled: its entry stays behind.
            drop(held);
        }
        assert_eq!(locks.len(), SWEEP_ABOVE);
        // Up to SWEEP_ABOVE entries are left alone...
        let _a = locks.lock(usize::MAX).await;
        assert_eq!(locks.len(), SWEEP_ABOVE + 1);
        // ...above that, the idle ones are swept; held ones stay.
        let _b = locks.lock(usize::MAX - 1).await;
        assert_eq!(locks.len(), 2);
    }
}
