//! Per-name async locks: providers whose API replaces a whole record set
//! (read, change, write back) serialise those steps per record name, so two
//! values written at one name at the same time (a wildcard and its apex)
//! do not lose each other.
//!
//! Invariant: the map holds only names somebody holds or waits for; an
//! entry is dropped with its last guard (pruned on the next `lock`), so it
//! stays as small as the number of names in use at once.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// The guard of one name: the name is held until it is dropped.
pub(crate) type NameGuard = tokio::sync::OwnedMutexGuard<()>;

/// One async mutex per key, created on demand.
pub(crate) struct NameLocks<K = String> {
    locks: Mutex<HashMap<K, Weak<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for NameLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

impl<K> fmt::Debug for NameLocks<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.locks.lock().map(|m| m.len()).unwrap_or(0);
        f.debug_struct("NameLocks").field("names", &held).finish()
    }
}

impl<K: Eq + Hash + Clone> NameLocks<K> {
    /// Waits for `key` and holds it until the guard is dropped.
    pub(crate) async fn lock(&self, key: &K) -> NameGuard {
        let mutex = {
            // A poisoned map only means another thread panicked while
            // holding it; the map itself is still consistent.
            let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
            map.retain(|_, weak| weak.strong_count() > 0);
            match map.get(key).and_then(Weak::upgrade) {
                Some(mutex) => mutex,
                None => {
                    let mutex = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.clone(), Arc::downgrade(&mutex));
                    mutex
                }
            }
        };
        mutex.lock_owned().await
    }

    /// How many names have a live lock (held or awaited).
    #[cfg(test)]
    pub(crate) fn live(&self) -> usize {
        let map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn one_holder_per_name_and_entries_go_away() {
        let locks: Arc<NameLocks> = Arc::new(NameLocks::default());
        let a = "a".to_owned();
        let guard = locks.lock(&a).await;
        // Another name is free.
        drop(locks.lock(&"b".to_owned()).await);
        // The same name waits until the guard goes.
        let waiter = tokio::spawn({
            let locks = locks.clone();
            async move {
                let _g = locks.lock(&"a".to_owned()).await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(guard);
        waiter.await.unwrap();
        assert_eq!(locks.live(), 0);
    }
}
